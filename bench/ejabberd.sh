#!/usr/bin/env bash
# Starts or stops an ejabberd for `parley-bench xmpp` (Debian's package:
# `apt-get install ejabberd`; the package's own service is not used).
#
#   bench/ejabberd.sh start [PORT]   # prints the beam.smp pid
#   bench/ejabberd.sh stop
#
# Its files live in $EJB_DIR (default /tmp/parley-ejabberd): the config
# from bench/ejabberd/ejabberd.yml with PORT (default 15222), its mnesia
# spool and its log. Only this script's own node (parleybench@localhost)
# is started or stopped. EJB_ERL adds flags to the Erlang VM, e.g.
# EJB_ERL='+sbwt none +sbwtdcpu none +sbwtdio none' (schedulers that do
# not spin while waiting: the VM's default spins, which costs CPU time at
# low load).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
dir=${EJB_DIR:-/tmp/parley-ejabberd}
node=parleybench@localhost
# As the package's user, without su: su's PAM session would drop the open
# file limit to 1024, and 10,000 sessions need more.
as_user=()
if [ "$(id -u)" = 0 ] && id ejabberd >/dev/null 2>&1; then
  as_user=(env HOME="$(getent passwd ejabberd | cut -d: -f6)"
           setpriv --reuid ejabberd --regid ejabberd --init-groups)
fi
ctl() {
  "${as_user[@]}" ejabberdctl --config-dir "$dir" --config "$dir/ejabberd.yml" \
    --spool "$dir/spool" --logs "$dir/logs" --node "$node" "$@"
}
command -v ejabberdctl >/dev/null || {
  echo "ejabberdctl not found: apt-get install ejabberd" >&2; exit 2; }
case "${1:-}" in
  start)
    port=${2:-15222}
    mkdir -p "$dir/spool" "$dir/logs"
    sed "s/@PORT@/$port/" "$here/ejabberd/ejabberd.yml" > "$dir/ejabberd.yml"
    cp /etc/ejabberd/inetrc "$dir/inetrc"
    printf 'ERL_OPTIONS="-env ERL_CRASH_DUMP_BYTES 0 %s"\nEJABBERD_PID_PATH=%s/ejabberd.pid\n' \
      "${EJB_ERL:-}" "$dir" > "$dir/ejabberdctl.cfg"
    [ ${#as_user[@]} -eq 0 ] || chown -R ejabberd "$dir"
    ulimit -n "$(ulimit -Hn)"
    rm -f "$dir/ejabberd.pid"
    ctl start
    if ! ctl started ||
       [ ! -s "$dir/ejabberd.pid" ]; then
      echo "ejabberd did not start; its log:" >&2
      tail -5 "$dir/logs/error.log" >&2 || true
      exit 1
    fi
    cat "$dir/ejabberd.pid"
    ;;
  stop)
    ctl stop || true
    ctl stopped || true
    ;;
  *) echo "usage: $0 start [PORT] | stop" >&2; exit 2 ;;
esac
