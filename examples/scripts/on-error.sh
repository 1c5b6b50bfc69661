#!/bin/sh
# Example ErrorScript: Goophry runs it with one argument describing a failed
# task (the script, its quoted args, a blank line, the error message).
# It appends that to a log file and prints nothing.
{
    printf '%s\n' "$1"
    printf '%s\n' '----'
} >> "${TMPDIR:-/tmp}/goophry-errors.log"
