#!/usr/bin/env bash
# Installs the Debian packages that the integration tests start for real. Idempotent; a no-op when present.
# Without root (or apt) it says which packages are missing and returns 0: those tests then skip loudly.
# Usage: system-deps.sh [all|slurm|chromium]   (default all; tests/slurm_cluster.py asks for "slurm" only)
set -euo pipefail
group=${1:-all}
case $group in all | slurm | chromium) ;; *) echo "usage: $0 [all|slurm|chromium]" >&2; exit 2 ;; esac
# Debian puts the daemons in /usr/sbin, which a non-root PATH may lack.
export PATH="$PATH:/usr/sbin:/sbin"
need=()
if [ "$group" = all ] || [ "$group" = slurm ]; then
  command -v slurmctld >/dev/null || need+=(slurmctld)
  command -v slurmd >/dev/null || need+=(slurmd)
  command -v sbatch >/dev/null || need+=(slurm-client)
  command -v munged >/dev/null || need+=(munge)
  command -v ss >/dev/null || need+=(iproute2) # the Slurm tests check listeners with ss
fi
if [ "$group" = all ] || [ "$group" = chromium ]; then
  command -v chromium >/dev/null || need+=(chromium)
fi
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
  echo "system-deps: not root or no apt-get; missing ${need[*]} (the tests that need them will skip)" >&2
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# Where an init system runs, the packages may also start system munge/slurm daemons; the tests never use
# them (tests/slurm_cluster.py starts its own, with its own socket, ports and SLURM_CONF).
apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
echo "system-deps: installed ${need[*]}"
