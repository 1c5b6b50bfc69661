"""
The dashboard's pages, built with L{twisted.web.template} from what the
operations read.  Every string from Redis is producer data: it goes in as
text (the flattener escapes it), never as markup or a URL.
"""

from __future__ import annotations

import json
import time
import unicodedata
from collections.abc import Sequence
from importlib import resources
from typing import Any
from urllib.parse import quote

import attrs
from twisted.web.iweb import IRequest
from twisted.web.template import Element, Flattenable, Tag, XMLString, renderer, tags

from goophry_tx import __version__
from goophry_tx.dashboard.auth import Access
from goophry_tx.dashboard.history import WHATS, Minute, last_minute
from goophry_tx.operations import (
    FailedEntry,
    FailedPage,
    InflightEntry,
    Instance,
    Overview,
    QueueHead,
)

#: Entries shown per page of a failed list, and of a queue's head.
PAGE_SIZE = 50

#: Seconds between two refreshes of an open page by its script.
REFRESH_SECONDS = 3

#: Characters shown as their escape: they could hide or reorder the text around them.
_HIDDEN = {"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"}

_TEMPLATE = XMLString(
    resources.files("goophry_tx.dashboard").joinpath("templates/page.xml").read_text("utf-8")
)


def visible(text: str) -> Flattenable:
    """
    Text as it is, except that control, format and unassigned characters
    show as C{\\uXXXX}, marked: a right-to-left override in an argument
    must not turn the page around, and each is there to be seen.
    """
    parts: list[Flattenable] = []
    plain: list[str] = []
    for ch in text:
        if ch in "\n\t" or unicodedata.category(ch) not in _HIDDEN:
            plain.append(ch)
            continue
        if plain:
            parts.append("".join(plain))
            plain = []
        code = ord(ch)
        parts.append(
            tags.span(f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}", class_="ctl")
        )
    if plain:
        parts.append("".join(plain))
    return parts


def shown_json(value: Any) -> Flattenable:
    return visible(json.dumps(value, ensure_ascii=False))


def shown_raw(raw: bytes) -> Flattenable:
    return visible(raw.decode("utf-8", "backslashreplace"))


def shown_args(raw: bytes) -> Flattenable:
    """An entry's Args when it has them as a producer pushes them; else the raw entry."""
    try:
        fields = json.loads(raw)
    except ValueError:
        fields = None
    if isinstance(fields, dict) and isinstance(fields.get("Args"), list):
        return shown_json(fields["Args"])
    return tags.span(shown_raw(raw), class_="raw")


def when(seconds: float | None) -> Flattenable:
    if seconds is None:
        return tags.span("—", class_="muted", title="not recorded")
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(seconds))
    return tags.time(
        stamp + " UTC", datetime=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))
    )


def number(n: int, kind: str = "") -> Tag:
    """A right-aligned figure; a non-zero one of a meaningful C{kind} is coloured."""
    classes = "num" + (f" {kind}" if kind and n else "")
    return tags.td(str(n), class_=classes)


def badge(text: str, kind: str) -> Tag:
    return tags.span(text, class_=f"badge {kind}")


@attrs.frozen
class Context:
    """
    What every page needs besides its data: where the dashboard is mounted
    (C{base}, ending in C{/}), the key prefix, what the viewer may do, and a
    line to show after an action.
    """

    base: str
    prefix: str
    access: Access
    read_only: bool
    message: str | None = None

    def type_url(self, task_type: str, action: str = "") -> str:
        url = f"{self.base}type/{quote(task_type, safe='')}"
        return f"{url}/{action}" if action else url


class Page(Element):
    """
    The frame of every page: header, navigation, the content, a footer.

    @param current: the navigation entry to mark (C{overview}, C{instances}).
    @param content: the page's own part, drawn inside C{<main>}.
    @param refresh: whether the page's script refreshes it (not a form's page).
    """

    loader = _TEMPLATE

    def __init__(
        self, context: Context, title: str, current: str, content: Flattenable, refresh: bool = True
    ) -> None:
        super().__init__()
        self._context = context
        self._title = title
        self._current = current
        self._content = content
        self._refresh = refresh

    @renderer
    def nav(self, request: IRequest | None, tag: Tag) -> Flattenable:
        c = self._context
        links = [("overview", "Overview", c.base), ("instances", "Instances", f"{c.base}instances")]
        items: list[Flattenable] = [
            tags.a(label, href=href, class_="current" if name == self._current else "")
            for name, label, href in links
        ]
        if c.access.can_write:
            items.append(form(c, f"{c.base}logout", "Log out", "link"))
        elif not c.read_only:
            items.append(tags.a("Log in", href=f"{c.base}login", class_="login"))
        return tag(*items)

    @renderer
    def main(self, request: IRequest | None, tag: Tag) -> Flattenable:
        if self._refresh:
            tag(**{"data-refresh": str(REFRESH_SECONDS)})
        if self._context.message:
            tag(tags.p(self._context.message, class_="flash"))
        return tag(self._content)

    @renderer
    def page(self, request: IRequest | None, tag: Tag) -> Flattenable:
        c = self._context
        return tag.fillSlots(title=self._title, base=c.base, version=__version__, prefix=c.prefix)


def form(
    context: Context,
    action: str,
    label: str,
    kind: str = "",
    fields: Sequence[tuple[str, str]] = (),
    extra: Flattenable = (),
) -> Tag:
    """A POST form of one button, carrying the session's CSRF token."""
    hidden = [tags.input(type="hidden", name=k, value=v) for k, v in fields]
    if context.access.csrf is not None:
        hidden.append(tags.input(type="hidden", name="csrf", value=context.access.csrf))
    return tags.form(
        *hidden,
        extra,
        tags.button(label, type="submit", class_=f"btn {kind}".strip()),
        method="post",
        action=action,
        class_="inline",
    )


# Overview

_SERIES = (("started", "Started"), ("succeeded", "Succeeded"), ("failed", "Failed"))


def chart(task_type: str, history: Sequence[Minute]) -> Tag:
    """
    Tasks started, succeeded and failed per minute, as an inline SVG: a
    line each, and a column per minute whose title is its tooltip.
    """
    width, height, pad = 600, 120, 4
    n = max(len(history), 2)
    top = max([m.get(task_type, w) for m in history for w in WHATS] + [1])
    step = (width - 2 * pad) / (n - 1)

    def y(value: int) -> str:
        return f"{height - pad - value * (height - 2 * pad) / top:.1f}"

    svg = Tag("svg")(
        viewBox=f"0 0 {width} {height}",
        preserveAspectRatio="none",
        role="img",
        class_="chart",
        **{"aria-label": f"{task_type}: tasks per minute over the last hour"},
    )
    for i in range(1, 4):
        svg(
            Tag("line")(
                x1="0",
                x2=str(width),
                y1=str(height * i // 4),
                y2=str(height * i // 4),
                class_="grid",
            )
        )
    for what, _ in _SERIES:
        points = " ".join(
            f"{pad + i * step:.1f},{y(m.get(task_type, what))}" for i, m in enumerate(history)
        )
        svg(Tag("polyline")(points=points, class_=f"series {what}"))
    for i, m in enumerate(history):
        stamp = time.strftime("%H:%M", time.gmtime(m.minute * 60))
        text = f"{stamp} UTC: " + ", ".join(
            f"{m.get(task_type, what)} {what}" for what, _ in _SERIES
        )
        svg(
            Tag("rect")(
                Tag("title")(text),
                x=f"{pad + (i - 0.5) * step:.1f}",
                y="0",
                width=f"{step:.1f}",
                height=str(height),
                class_="hover",
            )
        )
    legend = tags.ul(
        [tags.li(tags.span(class_=f"swatch {what}"), label) for what, label in _SERIES],
        class_="legend",
    )
    return tags.figure(
        tags.figcaption(visible(task_type), tags.span(f" peak {top}/min", class_="muted")),
        svg,
        tags.div(tags.span("60 min ago"), legend, tags.span("now"), class_="axis"),
        class_="chart-box",
    )


def overview(
    context: Context,
    figures: Overview,
    running: dict[str, int],
    history: Sequence[Minute],
    now: float,
) -> Tag:
    rows = []
    for task_type, f in figures.types.items():
        rows.append(
            tags.tr(
                tags.th(
                    tags.a(visible(task_type), href=context.type_url(task_type)),
                    " ",
                    badge("paused", "paused") if f.paused else "",
                    scope="row",
                ),
                number(f.queued),
                number(running.get(task_type, 0), "running"),
                number(f.inflight),
                number(f.failed, "failed"),
                number(f.scheduled),
                number(last_minute(history, now, task_type, "succeeded"), "ok"),
                number(last_minute(history, now, task_type, "failed"), "failed"),
                class_="paused" if f.paused else "",
            )
        )
    headings = [
        "Type",
        "Queued",
        "Running",
        "In flight",
        "Failed",
        "Scheduled",
        "Succeeded/min",
        "Failed/min",
    ]
    dead = (
        tags.a(f"{figures.dead} dead", href=f"{context.base}instances", class_="failed")
        if figures.dead
        else ""
    )
    return tags.div(
        tags.div(
            tags.h1("Overview"),
            tags.p(
                tags.a(
                    f"{figures.alive} instance{'s' if figures.alive != 1 else ''} alive",
                    href=f"{context.base}instances",
                ),
                " ",
                dead,
                class_="summary",
            ),
            class_="title",
        ),
        tags.div(
            tags.table(
                tags.thead(tags.tr([tags.th(h, scope="col") for h in headings])),
                tags.tbody(rows),
                class_="figures",
            ),
            class_="scroll",
        ),
        tags.h2("Tasks per minute, last hour"),
        tags.div([chart(t, history) for t in figures.types], class_="charts"),
    )


# A type's page


def _controls(context: Context, task_type: str, paused: bool, failed: int) -> Flattenable:
    if not context.access.can_write:
        if context.read_only:
            return tags.p(
                "Read-only: set DashboardToken to retry, delete or pause.", class_="muted"
            )
        return tags.p(
            tags.a("Log in", href=f"{context.base}login"),
            " to retry, delete or pause.",
            class_="muted",
        )
    pausing = (
        form(context, context.type_url(task_type, "resume"), "Resume", "primary")
        if paused
        else form(context, context.type_url(task_type, "pause"), "Pause", "warn")
    )
    bulk: list[Flattenable] = []
    if failed:
        bulk.append(
            form(
                context, context.type_url(task_type, "retry-all"), f"Retry all {failed}", "primary"
            )
        )
        sure = tags.label(
            tags.input(type="checkbox", name="confirm", value="yes", required="required"),
            " sure",
            class_="sure",
        )
        bulk.append(
            form(
                context,
                context.type_url(task_type, "purge-all"),
                f"Purge all {failed}",
                "danger",
                extra=sure,
            )
        )
    return tags.div(pausing, *bulk, class_="controls")


def _failed_row(context: Context, task_type: str, entry: FailedEntry) -> Tag:
    first, _, rest = entry.error_message.partition("\n")
    if entry.fields is None:
        error: Flattenable = tags.span(f"unreadable entry ({entry.problem})", class_="failed")
        args: Flattenable = tags.span(shown_raw(entry.raw), class_="raw")
    else:
        error = (
            tags.details(tags.summary(visible(first)), tags.pre(visible(entry.error_message)))
            if rest
            else visible(first)
        )
        payload = entry.fields.get("Payload")
        if entry.invalid and isinstance(payload, str):
            # Not a task: what the producer pushed is all there is to show.
            args = tags.span(tags.span("payload ", class_="muted"), visible(payload), class_="raw")
        elif entry.args is not None:
            args = shown_json(entry.args)
        else:
            args = tags.span(shown_raw(entry.raw), class_="raw")
    actions: list[Flattenable] = []
    if context.access.can_write:
        ref = [("index", str(entry.index)), ("id", entry.id)]
        if entry.fields is not None and not entry.invalid:
            actions.append(
                form(context, context.type_url(task_type, "retry"), "Retry", "", fields=ref)
            )
        actions.append(
            form(
                context, context.type_url(task_type, "delete"), "Delete", "danger-quiet", fields=ref
            )
        )
    return tags.tr(
        tags.td(str(entry.index), class_="num"),
        tags.td(
            when(entry.failed_at),
            tags.br(),
            tags.span(visible(entry.instance or ""), class_="muted small"),
        ),
        tags.td(args, class_="args"),
        tags.td(error, class_="error"),
        tags.td(actions, class_="actions"),
    )


def _pager(context: Context, task_type: str, page: int, total: int) -> Flattenable:
    pages = max(1, -(-total // PAGE_SIZE))
    if pages == 1:
        return ""
    url = context.type_url(task_type)
    return tags.nav(
        tags.a("← previous", href=f"{url}?page={page - 1}")
        if page > 1
        else tags.span("← previous", class_="muted"),
        tags.span(f" page {page} of {pages} "),
        tags.a("next →", href=f"{url}?page={page + 1}")
        if page < pages
        else tags.span("next →", class_="muted"),
        class_="pager",
    )


def type_page(
    context: Context,
    task_type: str,
    paused: bool,
    head: QueueHead,
    running: Sequence[InflightEntry],
    failed: FailedPage,
    page: int,
) -> Tag:
    queue_rows = [
        tags.tr(tags.td(str(i), class_="num"), tags.td(shown_args(raw), class_="args"))
        for i, raw in enumerate(head.entries)
    ]
    running_rows = [
        tags.tr(
            tags.td(
                visible(e.instance),
                " ",
                badge("alive", "ok") if e.alive else badge("dead", "failed"),
            ),
            tags.td(shown_args(e.raw), class_="args"),
            tags.td(str(e.recoveries), class_="num"),
        )
        for e in running
    ]
    failed_rows = [_failed_row(context, task_type, e) for e in failed.entries]
    return tags.div(
        tags.div(
            tags.h1(visible(task_type), " ", badge("paused", "paused") if paused else ""),
            tags.p(
                tags.span(f"{head.total} queued"),
                " · ",
                tags.span(f"{len(running)} in flight"),
                " · ",
                tags.span(f"{failed.total} failed", class_="failed" if failed.total else ""),
                class_="summary",
            ),
            class_="title",
        ),
        _controls(context, task_type, paused, failed.total),
        tags.section(
            tags.h2("Running now"),
            tags.div(
                tags.table(
                    tags.thead(
                        tags.tr(tags.th("Instance"), tags.th("Args"), tags.th("Recoveries"))
                    ),
                    tags.tbody(running_rows),
                ),
                class_="scroll",
            )
            if running_rows
            else tags.p("Nothing runs.", class_="muted"),
        ),
        tags.section(
            tags.h2(
                f"Queue: first {len(head.entries)} of {head.total}"
                if head.total > len(head.entries)
                else "Queue"
            ),
            tags.div(
                tags.table(
                    tags.thead(tags.tr(tags.th("#"), tags.th("Args"))),
                    tags.tbody(queue_rows),
                ),
                class_="scroll",
            )
            if queue_rows
            else tags.p("Empty.", class_="muted"),
        ),
        tags.section(
            tags.h2(f"Failed: {failed.total}"),
            tags.div(
                tags.table(
                    tags.thead(
                        tags.tr(
                            tags.th("#"),
                            tags.th("Failed at"),
                            tags.th("Args"),
                            tags.th("Error"),
                            tags.th(""),
                        )
                    ),
                    tags.tbody(failed_rows),
                    class_="failed-list",
                ),
                class_="scroll",
            )
            if failed_rows
            else tags.p("None.", class_="muted"),
            _pager(context, task_type, page, failed.total),
        ),
    )


# Instances


def instances_page(context: Context, instances: Sequence[Instance]) -> Tag:
    rows = [
        tags.tr(
            tags.td(visible(i.name)),
            tags.td(visible(i.host)),
            tags.td(str(i.pid) if i.pid is not None else "", class_="num"),
            tags.td(when(i.started)),
            tags.td(badge("alive", "ok") if i.alive else badge("dead", "failed")),
            tags.td(visible(", ".join(i.types))),
            number(i.inflight),
            class_="" if i.alive else "dead",
        )
        for i in instances
    ]
    headings = ["Name", "Host", "PID", "Started", "State", "Types", "In flight"]
    return tags.div(
        tags.div(tags.h1("Instances"), class_="title"),
        tags.div(
            tags.table(
                tags.thead(tags.tr([tags.th(h, scope="col") for h in headings])),
                tags.tbody(rows),
            ),
            class_="scroll",
        )
        if rows
        else tags.p("No instance is registered.", class_="muted"),
    )


# Logging in, and what went wrong


def login_page(context: Context, wrong: bool) -> Tag:
    return tags.div(
        tags.h1("Log in"),
        tags.p("Wrong token.", class_="flash failed") if wrong else "",
        tags.form(
            tags.label(
                "Dashboard token",
                tags.input(
                    type="password",
                    name="token",
                    autocomplete="current-password",
                    required="required",
                ),
            ),
            tags.button("Log in", type="submit", class_="btn primary"),
            method="post",
            action=f"{context.base}login",
            class_="login-form",
        ),
        class_="narrow",
    )


def problem_page(title: str, text: str) -> Tag:
    return tags.div(tags.h1(title), tags.p(text), class_="narrow")
