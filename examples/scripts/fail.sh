#!/bin/sh
# Example task that always fails, to show the failed list and the ErrorScript:
#   redis-cli RPUSH goophry:fail '{"Args":["oops"]}'
#   redis-cli LRANGE goophry:fail:failed 0 -1
echo "fail.sh: giving up on '$1'"
exit 3
