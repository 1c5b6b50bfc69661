#!/bin/sh
# Example task: records "hello <name>" in a log file and prints nothing.
# Goophry counts any output as a failure, so a good task script is silent
# and reports what it did somewhere else (a file, a database, ...).
#   redis-cli RPUSH goophry:hello '{"Args":["world"]}'
echo "hello $1" >> "${TMPDIR:-/tmp}/goophry-demo.log"
