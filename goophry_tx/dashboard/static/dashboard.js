// Goophry dashboard: refreshes the page's <main> every few seconds while the
// tab is visible. The pages work without it; this only saves the reload.
"use strict";

(function () {
  var main = document.getElementById("main");
  if (!main || !main.dataset.refresh || !window.fetch || !window.DOMParser) {
    return;
  }
  var every = Math.max(1, Number(main.dataset.refresh)) * 1000;
  var timer = null;
  var busy = false;

  // Someone typing, about to press a button, or reading an opened error is
  // not interrupted.
  function interacting() {
    var active = document.activeElement;
    if (active && active !== document.body && main.contains(active) &&
        /^(INPUT|SELECT|TEXTAREA|BUTTON|SUMMARY)$/.test(active.tagName)) {
      return true;
    }
    return main.querySelector("details[open], form:hover") !== null;
  }

  function refresh() {
    if (busy || document.hidden || interacting()) {
      return;
    }
    busy = true;
    fetch(window.location.href, {credentials: "same-origin", cache: "no-store"})
      .then(function (response) {
        if (!response.ok) {
          throw new Error("HTTP " + response.status);
        }
        return response.text();
      })
      .then(function (text) {
        var page = new DOMParser().parseFromString(text, "text/html");
        var fresh = page.getElementById("main");
        // Nodes are replaced only when something changed: a button under
        // the pointer stays the same button.
        if (fresh && fresh.innerHTML !== main.innerHTML) {
          main.replaceChildren.apply(main, Array.prototype.slice.call(fresh.childNodes));
          document.title = page.title;
          document.body.classList.remove("stale");
        }
      })
      .catch(function () {
        document.body.classList.add("stale");
      })
      .then(function () {
        busy = false;
      });
  }

  function schedule() {
    if (timer !== null) {
      clearInterval(timer);
      timer = null;
    }
    if (!document.hidden) {
      timer = setInterval(refresh, every);
    }
  }

  document.addEventListener("visibilitychange", function () {
    if (!document.hidden) {
      refresh();
    }
    schedule();
  });
  schedule();
})();
