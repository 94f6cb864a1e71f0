#!/bin/sh
# Run one long set-up command under a heading, with a line every 10 s while it runs, so that a
# slow install is never silent (pip --quiet prints nothing for minutes).
#   scripts/progress.sh "what is installed and why it takes a while" command [args...]
msg=$1
shift
echo "==> $msg"
start=$(date +%s)
"$@" &
pid=$!
(
    while sleep 10; do
        kill -0 "$pid" 2>/dev/null || exit 0
        echo "    ... still working ($(($(date +%s) - start)) s)"
    done
) &
ticker=$!
wait "$pid"
rc=$?
kill "$ticker" 2>/dev/null
wait "$ticker" 2>/dev/null
if [ "$rc" -eq 0 ]; then
    echo "    done in $(($(date +%s) - start)) s"
else
    echo "    FAILED (exit status $rc)"
fi
exit "$rc"
