"""The benchmark suite: the daemon beside raw references, measured in the same run.

`python -m bench` runs every scenario; `python -m bench --help` lists them.
"""
