#!/usr/bin/env bash
# Install the Debian packages hs's build and tests use when this machine lacks them: Python with venv,
# a C compiler with libpq's and Python's headers (the federation tests build psycopg2 for the Synapse
# they install), PostgreSQL and Redis (tests start throwaway servers from their binaries when none is
# running), nginx (the cluster tests put it in front) and haproxy (its rendered config is checked). Used by `make test` and `.ci/run`.
set -euo pipefail

need_pkgs=()
command -v python3 >/dev/null || need_pkgs+=(python3 python3-venv python3-dev)
python3 -c 'import venv, ensurepip' 2>/dev/null || need_pkgs+=(python3-venv)
command -v make >/dev/null || need_pkgs+=(make)
command -v gcc >/dev/null || need_pkgs+=(gcc)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null || need_pkgs+=(postgresql)
command -v redis-server >/dev/null || need_pkgs+=(redis-server)
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || need_pkgs+=(nginx-light)
# The proxy tests check that haproxy accepts the config `hs routes --format haproxy` renders.
command -v haproxy >/dev/null || [ -x /usr/sbin/haproxy ] || need_pkgs+=(haproxy)
command -v psql >/dev/null || need_pkgs+=(postgresql-client)
# The federation tests install Synapse with psycopg2, which compiles against libpq and Python's headers.
command -v pg_config >/dev/null || need_pkgs+=(libpq-dev)
python3 -c 'import os, sysconfig; assert os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h"))' \
  2>/dev/null || need_pkgs+=(python3-dev)
[ ${#need_pkgs[@]} -eq 0 ] && exit 0

echo "installing system packages: ${need_pkgs[*]}"
sudo=()
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null; then
    sudo=(sudo)
  else
    echo "missing system packages (${need_pkgs[*]}): install them as root (apt-get install ${need_pkgs[*]})" >&2
    exit 1
  fi
fi
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -qq
"${sudo[@]}" apt-get install -y -qq "${need_pkgs[@]}"
