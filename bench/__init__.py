"""The benchmark suite: the daemon beside raw references, measured in the same run.

C{python -m bench} runs every scenario; C{python -m bench --help} lists them.
"""
