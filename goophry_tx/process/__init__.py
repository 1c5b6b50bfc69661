"""
The process engine: starting scripts and telling how each run ended.

L{spawn.PosixSpawner} starts children (C{posix_spawn}, from threads through
L{libc_spawn} when asked), and L{runner.ScriptRunner} runs one script with
its output limit and timeout and fires an L{goophry_tx.task.Outcome}.

Nothing here knows of Redis, queues or the failure store: this package
imports Twisted and L{goophry_tx.task}'s value objects only, and the rest of
the package imports it, never the reverse.
"""
