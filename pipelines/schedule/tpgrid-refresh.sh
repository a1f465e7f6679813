#!/usr/bin/env bash
# Re-run a pipeline when its inputs changed; for cron, systemd timers or any scheduler.
#
#   crontab -e
#   # every Monday at 03:00: refresh the maps if a covariate, the sites or the settings changed
#   0 3 * * 1  /opt/tpgrid/pipelines/schedule/tpgrid-refresh.sh /opt/tpgrid/pipelines/tibet_1km.yaml >> /var/log/tpgrid.log 2>&1
#
# Exit status: 0 when the maps were refreshed or nothing had changed; the pipeline's own
# non-zero status otherwise (2: bad input or config, message says what to fix; 1: failure),
# so the scheduler reports real failures only. Extra arguments go to `tpgrid run`
# (e.g. --cluster cluster/slurm.yaml).
set -uo pipefail
config="${1:?usage: tpgrid-refresh.sh PIPELINE.yaml [tpgrid run options]}"
shift
echo "$(date -u +%FT%TZ) tpgrid run ${config} --if-changed $*"
tpgrid run "${config}" --if-changed "$@"
status=$?
if [ "${status}" -eq 3 ]; then
  echo "$(date -u +%FT%TZ) no input changed: nothing to do"
  exit 0
fi
exit "${status}"
