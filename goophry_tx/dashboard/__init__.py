"""
A web dashboard on the stats server: what is queued, what runs, what
failed and why, which daemons live; with buttons to retry, delete, purge,
pause and resume when a C{DashboardToken} is set.

L{resource} serves it, L{views} draws its pages, L{auth} decides who may
change things, and L{history} keeps the per-minute counts its charts draw.
"""
