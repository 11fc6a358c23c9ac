#!/usr/bin/env bash
# Make sure MariaDB (>= 10.6) and Redis run and the `zlh` database and user exist. Idempotent.
#
# On a fresh Debian machine this installs mariadb-server, redis-server and what mysqlclient
# compiles against (default-libmysqlclient-dev, pkg-config, a C compiler, Python headers), then
# starts both servers bound to 127.0.0.1. When DATABASE_URL / REDIS_URL point at another host,
# that service is only checked, never installed or started here.
#
# Env: DATABASE_URL (default mysql://zlh:zlh@127.0.0.1:3306/zlh), REDIS_URL
# (default redis://127.0.0.1:6379/0), SERVICES_WAIT_SECONDS (default 60).
set -euo pipefail

DATABASE_URL="${DATABASE_URL:-mysql://zlh:zlh@127.0.0.1:3306/zlh}"
REDIS_URL="${REDIS_URL:-redis://127.0.0.1:6379/0}"
WAIT="${SERVICES_WAIT_SECONDS:-60}"

log() { printf '[services] %s\n' "$*" >&2; }
die() { printf '[services] ERROR: %s\n' "$*" >&2; exit 1; }

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else SUDO=""; fi
fi

# --- parse the URLs (scheme://user:pass@host:port/name) ------------------------------------
parse_url() {  # $1=url -> sets U_USER U_PASS U_HOST U_PORT U_PATH
  local rest="${1#*://}" auth hostport
  if [[ "$rest" == *@* ]]; then auth="${rest%%@*}"; rest="${rest#*@}"; else auth=""; fi
  U_USER="${auth%%:*}"; U_PASS=""; [[ "$auth" == *:* ]] && U_PASS="${auth#*:}"
  hostport="${rest%%/*}"; U_PATH=""; [[ "$rest" == */* ]] && U_PATH="${rest#*/}"
  U_PATH="${U_PATH%%\?*}"
  U_HOST="${hostport%%:*}"; U_PORT=""; [[ "$hostport" == *:* ]] && U_PORT="${hostport#*:}"
}
is_local() { [[ "$1" == "127.0.0.1" || "$1" == "localhost" || "$1" == "::1" || -z "$1" ]]; }

parse_url "$DATABASE_URL"
DB_USER="$U_USER"; DB_PASS="$U_PASS"; DB_HOST="${U_HOST:-127.0.0.1}"; DB_PORT="${U_PORT:-3306}"
DB_NAME="$U_PATH"
parse_url "$REDIS_URL"
REDIS_HOST="${U_HOST:-127.0.0.1}"; REDIS_PORT="${U_PORT:-6379}"

[[ "$DB_NAME" =~ ^[A-Za-z0-9_]+$ ]] || die "database name '$DB_NAME' must be letters, digits, _"
[[ "$DB_USER" =~ ^[A-Za-z0-9_]+$ ]] || die "database user '$DB_USER' must be letters, digits, _"
[[ "$DB_PASS" != *"'"* ]] || die "the database password must not contain a single quote"

# --- packages -------------------------------------------------------------------------------
# apt waits up to 10 minutes for the dpkg lock: a fresh machine often runs unattended upgrades
# at boot, and a second install (CI beside a developer's own) must queue, not fail.
APT_UPDATED=""
apt_install() {
  command -v apt-get >/dev/null 2>&1 || die "missing $*, and this is not a Debian system: install them"
  if [ -z "$APT_UPDATED" ]; then
    log "apt-get update"; $SUDO env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 update -qq; APT_UPDATED=1
  fi
  log "installing $*"
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "$@" >/dev/null
}
have_pkg() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }

want=()
for p in default-libmysqlclient-dev pkg-config gcc make; do
  have_pkg "$p" || want+=("$p")
done
# Python 3.11+ with venv and headers (mysqlclient compiles a C extension).
PY="${PYTHON:-python3}"
if ! command -v "$PY" >/dev/null 2>&1; then
  want+=(python3 python3-venv python3-dev)
else
  "$PY" -c 'import ensurepip, venv' >/dev/null 2>&1 || want+=(python3-venv)
  "$PY" -c 'import os, sysconfig; p = sysconfig.get_paths()["include"]; raise SystemExit(not os.path.exists(os.path.join(p, "Python.h")))' \
    || want+=(python3-dev)
fi
command -v mariadb >/dev/null 2>&1 || want+=(mariadb-client)
command -v redis-cli >/dev/null 2>&1 || want+=(redis-tools)
if is_local "$DB_HOST"; then
  command -v mariadbd >/dev/null 2>&1 || [ -x /usr/sbin/mariadbd ] || want+=(mariadb-server)
fi
if is_local "$REDIS_HOST"; then
  command -v redis-server >/dev/null 2>&1 || want+=(redis-server)
fi
if [ ${#want[@]} -gt 0 ]; then apt_install "${want[@]}"; fi

wait_for() {  # $1=description, rest=command; bounded by $WAIT seconds
  local what="$1"; shift
  local deadline=$((SECONDS + WAIT))
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -lt $deadline ] || die "$what did not come up within ${WAIT}s"
    sleep 0.5
  done
}

# --- MariaDB --------------------------------------------------------------------------------
root_sql() {  # run SQL as the local administrator (unix socket as root, else root@127.0.0.1)
  if $SUDO mariadb --protocol=socket -uroot -e "SELECT 1" >/dev/null 2>&1; then
    $SUDO mariadb --protocol=socket -uroot "$@"
  else
    mariadb -h127.0.0.1 -P"$DB_PORT" -uroot "$@"
  fi
}
db_up() { mariadb-admin -h"$DB_HOST" -P"$DB_PORT" --connect-timeout=2 ping 2>/dev/null | grep -q alive \
  || mysqladmin -h"$DB_HOST" -P"$DB_PORT" --connect-timeout=2 ping 2>/dev/null | grep -q alive; }

if is_local "$DB_HOST"; then
  if ! db_up; then
    log "starting MariaDB"
    $SUDO mkdir -p /run/mysqld
    $SUDO chown mysql:mysql /run/mysqld 2>/dev/null || true
    if [ ! -d /var/lib/mysql/mysql ]; then
      log "initialising the MariaDB data directory"
      $SUDO mariadb-install-db --user=mysql --datadir=/var/lib/mysql >/dev/null
    fi
    if command -v systemctl >/dev/null 2>&1 && systemctl is-system-running >/dev/null 2>&1; then
      $SUDO systemctl start mariadb || true
    fi
    if ! db_up; then
      $SUDO start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd -- \
        --user=mysql --bind-address=127.0.0.1
    fi
    wait_for "MariaDB" db_up
  fi
  version=$(root_sql -N -e "SELECT VERSION()")
  major=$(echo "$version" | cut -d. -f1); minor=$(echo "$version" | cut -d. -f2)
  if [ "$major" -lt 10 ] || { [ "$major" -eq 10 ] && [ "$minor" -lt 6 ]; }; then
    die "MariaDB $version is too old: SKIP LOCKED needs 10.6 or newer"
  fi
  log "MariaDB $version is up; ensuring database '$DB_NAME' and user '$DB_USER'"
  root_sql <<SQL
CREATE DATABASE IF NOT EXISTS \`$DB_NAME\` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci;
CREATE USER IF NOT EXISTS '$DB_USER'@'localhost' IDENTIFIED BY '$DB_PASS';
CREATE USER IF NOT EXISTS '$DB_USER'@'127.0.0.1' IDENTIFIED BY '$DB_PASS';
ALTER USER '$DB_USER'@'localhost' IDENTIFIED BY '$DB_PASS';
ALTER USER '$DB_USER'@'127.0.0.1' IDENTIFIED BY '$DB_PASS';
GRANT ALL PRIVILEGES ON \`$DB_NAME\`.* TO '$DB_USER'@'localhost', '$DB_USER'@'127.0.0.1';
GRANT ALL PRIVILEGES ON \`test\\_$DB_NAME%\`.* TO '$DB_USER'@'localhost', '$DB_USER'@'127.0.0.1';
GRANT ALL PRIVILEGES ON \`${DB_NAME}\\_demo\`.* TO '$DB_USER'@'localhost', '$DB_USER'@'127.0.0.1';
FLUSH PRIVILEGES;
SQL
else
  log "DATABASE_URL points at $DB_HOST: not installing or starting MariaDB here"
fi
wait_for "MariaDB at $DB_HOST:$DB_PORT as $DB_USER" \
  mariadb -h"$DB_HOST" -P"$DB_PORT" -u"$DB_USER" ${DB_PASS:+-p"$DB_PASS"} -e "SELECT 1" "$DB_NAME"

# --- Redis ----------------------------------------------------------------------------------
redis_up() { [ "$(redis-cli -u "$REDIS_URL" ping 2>/dev/null)" = "PONG" ]; }
if is_local "$REDIS_HOST"; then
  if ! redis_up; then
    log "starting Redis"
    $SUDO mkdir -p /var/lib/redis /var/log/redis
    # Redis is ephemeral execution here (docs/design.md): nothing is persisted on purpose.
    $SUDO redis-server --daemonize yes --bind 127.0.0.1 --port "$REDIS_PORT" --save "" \
      --appendonly no --dir /var/lib/redis --logfile /var/log/redis/zlh.log
    wait_for "Redis" redis_up
  fi
else
  log "REDIS_URL points at $REDIS_HOST: not installing or starting Redis here"
fi
wait_for "Redis at $REDIS_HOST:$REDIS_PORT" redis_up
log "MariaDB and Redis are ready"
