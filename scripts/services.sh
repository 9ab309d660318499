#!/usr/bin/env bash
# Bring up, idempotently, the local services Weijian needs for tests and the demo:
#
#   * PostgreSQL 15 (the Debian cluster 15/main on 127.0.0.1:5432) with TimescaleDB
#     (Apache-only build of Debian trixie's source package, made here once) preloaded;
#   * the project's OWN Mosquitto broker on 127.0.0.1:${WEIJIAN_BROKER_PORT:-1884}
#     (config template deploy/mosquitto/mosquitto.conf, runtime state in .run/mosquitto/),
#     with the dynamic-security plugin and the platform account weijian/weijian.
#
# Usage: scripts/services.sh [up|status|check|stop]
#   up      (default) install/build/configure/start whatever is missing, then verify.
#           A no-op taking well under 2 s when everything is already in place.
#   status  show the state of both services; exit 1 if one is not ready.
#   check   deeper broker self-test: shared subscription, device ACL (reason code 135),
#           10 MB payload delivery.
#   stop    stop our Mosquitto instance (PostgreSQL is the machine's and is left running).
#
# Environment:
#   WEIJIAN_BROKER_PORT     port of our broker (default 1884)
#   WEIJIAN_DEBIAN_MIRROR   Debian mirror for the trixie source package (default: the mirror
#                           the system's apt sources use)
#
# Local development credentials (fixed; weijian/config.py's LOCAL_BROKER_URL matches, and the
# platform refuses that password for a non-local broker):
#   platform account   weijian / weijian        (roles weijian-platform + admin)
#   dynsec admin       weijian-admin / weijian-admin
#   PostgreSQL         postgres, trust auth on 127.0.0.1:5432
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
RUN="$ROOT/.run"

PG_VERSION=15
PG_CLUSTER=main
PG_HOST=127.0.0.1
PG_BIN="/usr/lib/postgresql/$PG_VERSION/bin"
TSDB_SERIES="2.19"          # what Debian trixie ships; the compose image is 2.19.3-pg15
SOURCE_SUITE=trixie
DEBIAN_KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg

MQ_DIR="$RUN/mosquitto"
MQ_CONF="$MQ_DIR/mosquitto.conf"
MQ_TEMPLATE="$ROOT/deploy/mosquitto/mosquitto.conf"
MQ_DYNSEC="$MQ_DIR/dynamic-security.json"
MQ_PIDFILE="$MQ_DIR/mosquitto.pid"
MQ_BIND=127.0.0.1
MQ_PORT="${WEIJIAN_BROKER_PORT:-1884}"
MQ_ADMIN_USER=weijian-admin
MQ_ADMIN_PASSWORD=weijian-admin
MQ_USER=weijian
MQ_PASSWORD=weijian
MQ_ROLE=weijian-platform
# ACLs of the platform role: everything (the tests use random topic roots such as
# t<hex>/weijian/v1/...; "#" as subscribePattern also covers $share/<group>/... filters),
# the dynamic-security API, and $SYS for health checks. Format: "acltype topic".
MQ_ROLE_ACLS=(
    "publishClientSend #"
    "publishClientReceive #"
    "subscribePattern #"
    "unsubscribePattern #"
    "publishClientSend \$CONTROL/dynamic-security/#"
    "publishClientReceive \$CONTROL/dynamic-security/#"
    "subscribePattern \$CONTROL/dynamic-security/#"
    "publishClientReceive \$SYS/#"
    "subscribePattern \$SYS/#"
)

# Settings for an ingest-heavy 2-core / 24 GB machine. Values are written in the form
# SHOW prints them, so that a second run sees no difference. synchronous_commit stays on.
PG_SETTINGS=(
    "timescaledb.telemetry_level=off"
    "max_connections=200"
    "shared_buffers=2GB"
    "effective_cache_size=12GB"
    "maintenance_work_mem=512MB"
    "work_mem=16MB"
    "wal_buffers=16MB"
    "min_wal_size=1GB"
    "max_wal_size=4GB"
    "checkpoint_timeout=15min"
    "checkpoint_completion_target=0.9"
    "wal_compression=lz4"
    "synchronous_commit=on"
    "fsync=on"
    "random_page_cost=1.1"
    "effective_io_concurrency=200"
    "max_worker_processes=16"
    "max_parallel_workers=2"
    "max_parallel_workers_per_gather=1"
    "timescaledb.max_background_workers=8"
)

log() { echo "services: $*"; }
warn() { echo "services: WARNING: $*" >&2; }
die() {
    echo "services: ERROR: $*" >&2
    exit 1
}

if [ "$(id -u)" -eq 0 ]; then
    SUDO=()
else
    SUDO=(sudo -n)
fi

# ----------------------------------------------------------------------------------------
# Debian packages
# ----------------------------------------------------------------------------------------
missing_packages() {
    local p
    for p in "$@"; do
        [ "$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true)" = installed ] || echo "$p"
    done
}

apt_install() {
    local missing aptlog="$RUN/apt-install.log" p
    missing="$(missing_packages "$@" | tr '\n' ' ')"
    missing="${missing% }"
    [ -n "$missing" ] || return 0
    log "installing Debian packages: $missing"
    local need_update=0
    local policy
    for p in $missing; do
        # No candidate (empty package lists or an unknown name): refresh the lists first.
        policy="$(apt-cache policy "$p" 2>/dev/null || true)"
        case "$policy" in
            *"Candidate: (none)"* | "") need_update=1 ;;
            *"Candidate: "*) ;;
            *) need_update=1 ;;
        esac
    done
    if [ "$need_update" = 1 ]; then
        log "apt-get update (package lists lack: $missing)"
        "${SUDO[@]}" apt-get update -q >"$aptlog" 2>&1 || { tail -n 20 "$aptlog" >&2; die "apt-get update failed"; }
    fi
    # shellcheck disable=SC2086  # word splitting of the package list is intended
    if ! "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
        --no-install-recommends -o Dpkg::Use-Pty=0 $missing >>"$aptlog" 2>&1 9>&-; then
        log "apt-get install failed; refreshing package lists and retrying"
        "${SUDO[@]}" apt-get update -q >>"$aptlog" 2>&1 || true
        # shellcheck disable=SC2086
        "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
            --no-install-recommends -o Dpkg::Use-Pty=0 $missing >>"$aptlog" 2>&1 9>&- ||
            { tail -n 30 "$aptlog" >&2; die "apt-get install $missing failed (log: $aptlog)"; }
    fi
}

# ----------------------------------------------------------------------------------------
# TimescaleDB: build trixie's source package once
# ----------------------------------------------------------------------------------------
pg_sharedir() { "$PG_BIN/pg_config" --sharedir; }
pg_pkglibdir() { "$PG_BIN/pg_config" --pkglibdir; }

tsdb_installed_version() {
    local control
    control="$(pg_sharedir)/extension/timescaledb.control"
    [ -f "$control" ] && [ -f "$(pg_pkglibdir)/timescaledb.so" ] || return 1
    sed -n "s/^default_version *= *'\([^']*\)'.*/\1/p" "$control"
}

debian_mirror() {
    if [ -n "${WEIJIAN_DEBIAN_MIRROR:-}" ]; then
        echo "$WEIJIAN_DEBIAN_MIRROR"
        return
    fi
    local codename uri
    # shellcheck disable=SC1091
    codename="$(. /etc/os-release && echo "${VERSION_CODENAME:-bookworm}")"
    # The mirror the system already uses for its own Debian release.
    # shellcheck disable=SC2016  # $(REPO_URI) is apt's format syntax, not a shell expansion
    uri="$(apt-get indextargets --format '$(REPO_URI)' 'Label: Debian' "Codename: $codename" 2>/dev/null | head -n 1)"
    # shellcheck disable=SC2016
    [ -n "$uri" ] || uri="$(apt-get indextargets --format '$(REPO_URI)' "Release: $codename" 2>/dev/null | head -n 1)"
    [ -n "$uri" ] || die "cannot find the Debian mirror in the apt sources; set WEIJIAN_DEBIAN_MIRROR"
    echo "${uri%/}"
}

build_timescaledb() {
    local t0=$SECONDS
    local apt_dir="$RUN/apt" build_root="$RUN/build/timescaledb"
    local buildlog="$RUN/build/timescaledb.log"
    log "TimescaleDB not installed for PostgreSQL $PG_VERSION: building trixie's source package (a minute or two)"
    apt_install "postgresql-server-dev-$PG_VERSION" cmake gcc make dpkg-dev libssl-dev libkrb5-dev xz-utils
    [ -f "$DEBIAN_KEYRING" ] || apt_install debian-archive-keyring

    # A private apt configuration: its own sources list, package lists and caches, so the
    # system's apt sources and state are never touched.
    mkdir -p "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial" "$RUN/build"
    local mirror
    mirror="$(debian_mirror)"
    printf 'deb-src [signed-by=%s] %s %s main\n' "$DEBIAN_KEYRING" "$mirror" "$SOURCE_SUITE" \
        >"$apt_dir/sources.list"
    local apt_opts=(
        -o "Dir::Etc::sourcelist=$apt_dir/sources.list"
        -o "Dir::Etc::sourceparts=-"
        -o "Dir::State::Lists=$apt_dir/lists"
        -o "Dir::Cache=$apt_dir/cache"
        -o "Dir::Cache::pkgcache="
        -o "Dir::Cache::srcpkgcache="
        -o "APT::Sandbox::User=root"
        -o "Acquire::Languages=none"
        -q
    )
    : >"$buildlog"
    log "fetching the $SOURCE_SUITE source index (private apt state in ${apt_dir#"$ROOT"/})"
    apt-get "${apt_opts[@]}" update >>"$buildlog" 2>&1 ||
        { tail -n 20 "$buildlog" >&2; die "apt-get update of the $SOURCE_SUITE sources failed"; }
    rm -rf "$build_root"
    mkdir -p "$build_root"
    (cd "$build_root" && apt-get "${apt_opts[@]}" source timescaledb) >>"$buildlog" 2>&1 ||
        { tail -n 20 "$buildlog" >&2; die "apt-get source timescaledb failed"; }
    local src version
    src="$(find "$build_root" -mindepth 1 -maxdepth 1 -type d -name 'timescaledb-*' | head -n 1)"
    [ -n "$src" ] || die "no source tree after apt-get source (log: $buildlog)"
    version="$(sed -n 's/^version *= *//p' "$src/version.config")"
    case "$version" in
        "$TSDB_SERIES".*) ;;
        *) warn "trixie now ships timescaledb $version, not $TSDB_SERIES.x (docker-compose.yml uses 2.19.3)" ;;
    esac
    log "building timescaledb $version (Apache-only) in ${build_root#"$ROOT"/}"
    {
        cmake -S "$src" -B "$build_root/build" \
            -DCMAKE_BUILD_TYPE=Release \
            -DPG_CONFIG="$PG_BIN/pg_config" \
            -DAPACHE_ONLY=ON \
            -DREGRESS_CHECKS=OFF \
            -DTAP_CHECKS=OFF \
            -DWARNINGS_AS_ERRORS=OFF \
            -DLINTER=OFF \
            -DENABLE_DEBUG_UTILS=OFF \
            -DGENERATE_DOWNGRADE_SCRIPT=OFF \
            -DUSE_TELEMETRY=ON \
            -DSEND_TELEMETRY_DEFAULT=OFF \
            -DCMAKE_DISABLE_FIND_PACKAGE_Git=ON &&
            make -C "$build_root/build" -j"$(nproc)" &&
            "${SUDO[@]}" make -C "$build_root/build" install
    } >>"$buildlog" 2>&1 || { tail -n 40 "$buildlog" >&2; die "timescaledb build failed (log: $buildlog)"; }
    log "timescaledb $version built and installed in $((SECONDS - t0))s (log: ${buildlog#"$ROOT"/})"
}

# ----------------------------------------------------------------------------------------
# PostgreSQL
# ----------------------------------------------------------------------------------------
pg_cluster_field() { # $1: awk field number of pg_lsclusters (3 port, 4 status)
    pg_lsclusters --no-header "$PG_VERSION" "$PG_CLUSTER" 2>/dev/null | awk -v f="$1" '{print $f}'
}

PG_PORT=""
pg_port() {
    [ -n "$PG_PORT" ] || PG_PORT="$(pg_cluster_field 3)"
    echo "$PG_PORT"
}

pg_ctl_cluster() {
    # 9>&-: the server must not inherit (and so hold forever) our lock file descriptor.
    "${SUDO[@]}" pg_ctlcluster --skip-systemctl-redirect "$PG_VERSION" "$PG_CLUSTER" "$@" 9>&-
}

psql_admin() { # psql as the superuser, over the Unix socket
    local port
    port="$(pg_port)"
    if [ "$(id -u)" -eq 0 ]; then
        runuser -u postgres -- psql -X -q -v ON_ERROR_STOP=1 -p "$port" "$@"
    else
        psql -X -q -v ON_ERROR_STOP=1 -h "$PG_HOST" -p "$port" -U postgres "$@"
    fi
}

pg_wait_ready() {
    local port
    port="$(pg_port)"
    for _ in $(seq 1 120); do
        pg_isready -q -h "$PG_HOST" -p "$port" && return 0
        sleep 0.5
    done
    tail -n 30 "/var/log/postgresql/postgresql-$PG_VERSION-$PG_CLUSTER.log" >&2 || true
    die "PostgreSQL did not become ready on $PG_HOST:$port"
}

pg_start_if_down() {
    if [ "$(pg_cluster_field 4)" != online ]; then
        log "starting PostgreSQL $PG_VERSION/$PG_CLUSTER"
        # (exit status 2 = someone else started it meanwhile: fine)
        if ! pg_ctl_cluster start && [ "$(pg_cluster_field 4)" != online ]; then
            tail -n 30 "/var/log/postgresql/postgresql-$PG_VERSION-$PG_CLUSTER.log" >&2
            die "pg_ctlcluster start failed"
        fi
    fi
    pg_wait_ready
}

pg_confd_file() { echo "/etc/postgresql/$PG_VERSION/$PG_CLUSTER/conf.d/95-weijian.conf"; }

pg_configure() {
    local confd
    confd="$(pg_confd_file)"
    grep -qE "^[[:space:]]*include_dir[[:space:]]*=[[:space:]]*'conf.d'" \
        "/etc/postgresql/$PG_VERSION/$PG_CLUSTER/postgresql.conf" ||
        die "postgresql.conf of $PG_VERSION/$PG_CLUSTER has no include_dir = 'conf.d'"

    # shared_preload_libraries: what the other configuration files ask for, plus timescaledb.
    local others desired_spl
    others="$(psql_admin -At -c "SELECT setting FROM pg_file_settings
        WHERE name = 'shared_preload_libraries' AND sourcefile <> '$confd' AND error IS NULL
        ORDER BY seqno DESC LIMIT 1")"
    others="$(echo "$others" | tr -d ' "' | tr ',' '\n' | grep -v '^$' | grep -vx timescaledb || true)"
    # shellcheck disable=SC2086  # one library per word
    desired_spl="$(printf '%s\n' $others timescaledb | paste -sd, -)"
    local settings=("shared_preload_libraries=$desired_spl" "${PG_SETTINGS[@]}")

    # 1. the conf.d snippet (rewritten only when its content changes)
    local content s changed=0
    content="# Written by weijian's scripts/services.sh; edit PG_SETTINGS there, not here."$'\n'
    for s in "${settings[@]}"; do content+="${s%%=*} = '${s#*=}'"$'\n'; done
    if [ "$(cat "$confd" 2>/dev/null)"$'\n' != "$content" ]; then
        log "writing ${confd} (TimescaleDB preload, settings for an ingest-heavy 2-core/24 GB machine)"
        printf '%s' "$content" | "${SUDO[@]}" tee "$confd" >/dev/null
        changed=1
    fi

    # 2. what the running server uses (also catches a run interrupted before its restart)
    local names=() current differ=()
    for s in "${settings[@]}"; do names+=("'${s%%=*}'"); done
    current="$(psql_admin -At -F '=' -c \
        "SELECT n, coalesce(current_setting(n, true), '') FROM unnest(ARRAY[$(
            IFS=,
            echo "${names[*]}"
        )]) AS n")"
    for s in "${settings[@]}"; do
        local name="${s%%=*}" want="${s#*=}" have
        have="$(printf '%s\n' "$current" | sed -n "s/^${name//./\\.}=//p")"
        [ "${have// /}" = "$want" ] || differ+=("$name: '${have}' -> '$want'")
    done
    [ "$changed" = 1 ] || [ ${#differ[@]} -gt 0 ] || return 0
    for s in "${differ[@]}"; do log "postgres setting $s"; done

    # 3. reload; restart only if a changed setting needs it
    psql_admin -c 'SELECT pg_reload_conf()' >/dev/null
    sleep 0.5
    local pending overridden
    pending="$(psql_admin -At -c 'SELECT string_agg(name, $$,$$) FROM pg_settings WHERE pending_restart')"
    if [ -n "$pending" ]; then
        log "restarting PostgreSQL $PG_VERSION/$PG_CLUSTER (changed: $pending)"
        pg_ctl_cluster restart ||
            { tail -n 30 "/var/log/postgresql/postgresql-$PG_VERSION-$PG_CLUSTER.log" >&2; die "pg_ctlcluster restart failed"; }
        pg_wait_ready
    fi
    # A later file (e.g. postgresql.auto.conf from ALTER SYSTEM) may override the snippet.
    overridden="$(psql_admin -At -c "SELECT string_agg(name || ' (' || error || ')', ', ')
        FROM pg_file_settings WHERE sourcefile = '$confd' AND (NOT applied OR error IS NOT NULL)")"
    [ -z "$overridden" ] || warn "settings of $confd not applied: $overridden"
    psql_admin -At -c 'SHOW shared_preload_libraries' | grep -qw timescaledb ||
        die "timescaledb is not in shared_preload_libraries after the restart"
}

pg_verify() { # CREATE EXTENSION in a scratch database; prints "<extversion> <license>"
    local db=weijian_services_check out err="$RUN/pg-verify.err"
    psql_admin -d postgres -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" -c "CREATE DATABASE $db" \
        >/dev/null 2>"$err" || die "cannot create a scratch database: $(cat "$err")"
    if ! out="$(psql_admin -At -d "$db" -c 'SET client_min_messages = error' \
        -c 'CREATE EXTENSION IF NOT EXISTS timescaledb' \
        -c "SELECT extversion || ' ' || current_setting('timescaledb.license')
            FROM pg_extension WHERE extname = 'timescaledb'" 2>"$err")"; then
        psql_admin -d postgres -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 || true
        die "CREATE EXTENSION timescaledb failed: $(cat "$err")"
    fi
    psql_admin -d postgres -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null
    rm -f "$err"
    echo "$out"
}

postgres_up() {
    apt_install "postgresql-$PG_VERSION" "postgresql-client-$PG_VERSION"
    if ! pg_lsclusters --no-header "$PG_VERSION" "$PG_CLUSTER" >/dev/null 2>&1; then
        log "creating PostgreSQL cluster $PG_VERSION/$PG_CLUSTER"
        "${SUDO[@]}" pg_createcluster "$PG_VERSION" "$PG_CLUSTER" >/dev/null 9>&-
    fi
    PG_PORT="$(pg_cluster_field 3)" # cached for pg_port (called in subshells)
    if ! tsdb_installed_version >/dev/null; then
        build_timescaledb
    fi
    pg_start_if_down
    pg_configure
    # The CREATE EXTENSION check is repeated whenever the server has restarted or the
    # extension files changed since it last passed; otherwise its result is reused.
    local port verified key stamp="$RUN/postgres-verified"
    port="$(pg_port)"
    key="$(psql_admin -At -c 'SELECT pg_postmaster_start_time()') $(stat -c %Y \
        "$(pg_sharedir)/extension/timescaledb.control" "$(pg_pkglibdir)/timescaledb.so" | paste -sd' ')"
    if [ -f "$stamp" ] && [ "$(head -n 1 "$stamp")" = "$key" ]; then
        verified="$(sed -n 2p "$stamp")"
    else
        verified="$(pg_verify)"
        printf '%s\n%s\n' "$key" "$verified" >"$stamp"
    fi
    local version="${verified%% *}" license="${verified##* }"
    [ "$license" = apache ] || warn "timescaledb.license is '$license', expected 'apache'"
    PG_READY_LINE="postgres $PG_HOST:$port (timescaledb $version, license $license) ready"
}

# ----------------------------------------------------------------------------------------
# Mosquitto (our own instance)
# ----------------------------------------------------------------------------------------
mq_user() {
    # As root, the broker keeps running as root: the checkout (and so .run/) may sit below a
    # directory only root can enter (a CI clone under a 0700 mktemp dir), where an unprivileged
    # broker could not open its persistence and log files. It listens on loopback only.
    id -un
}

mq_plugin() {
    local p
    for p in /usr/lib/*/mosquitto_dynamic_security.so /usr/lib/mosquitto_dynamic_security.so; do
        [ -f "$p" ] && { echo "$p"; return; }
    done
    die "mosquitto_dynamic_security.so not found (package mosquitto)"
}

mq_render() {
    sed -e "s|@RUN_DIR@|$MQ_DIR|g" \
        -e "s|@BIND@|$MQ_BIND|g" \
        -e "s|@PORT@|$MQ_PORT|g" \
        -e "s|@USER@|$(mq_user)|g" \
        -e "s|@DYNSEC_PLUGIN@|$(mq_plugin)|g" \
        "$MQ_TEMPLATE"
}

mq_pid() { # pid of OUR running broker, or fail
    local pid
    [ -f "$MQ_PIDFILE" ] || return 1
    pid="$(cat "$MQ_PIDFILE" 2>/dev/null)"
    [ -n "$pid" ] && [ -d "/proc/$pid" ] || return 1
    [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = mosquitto ] || return 1
    case "$(tr '\0' ' ' <"/proc/$pid/cmdline")" in *"$MQ_CONF"*) ;; *) return 1 ;; esac
    grep -q '^State:[[:space:]]*Z' "/proc/$pid/status" && return 1
    echo "$pid"
}

port_open() { timeout 2 bash -c "exec 3<>/dev/tcp/$1/$2" 2>/dev/null; }

proc_alive() { [ -d "/proc/$1" ] && ! grep -q '^State:[[:space:]]*Z' "/proc/$1/status" 2>/dev/null; }

mq_running() { mq_pid >/dev/null && port_open "$MQ_BIND" "$MQ_PORT"; }

mq_stop() {
    local pid
    pid="$(mq_pid)" || return 0
    log "stopping mosquitto (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 300); do # saving a large persistence file can take a while
        proc_alive "$pid" || break
        sleep 0.1
    done
    if proc_alive "$pid"; then
        warn "mosquitto $pid did not stop in 30 s; killing it"
        kill -KILL "$pid" 2>/dev/null || true
        sleep 0.2
    fi
    rm -f "$MQ_PIDFILE"
}

# The broker of ANOTHER checkout of this project (e.g. the work tree whose session ended,
# when CI runs in a fresh clone) may hold our port: this checkout takes it over.
mq_take_over_port() {
    local pid cmd i
    pid="$(ss -Hltnp "( sport = :$MQ_PORT )" 2>/dev/null | sed -n 's/.*"mosquitto",pid=\([0-9]*\).*/\1/p' | head -n 1)"
    [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] || return 1
    cmd="$(tr '\0' ' ' <"/proc/$pid/cmdline")"
    case "$cmd" in
        *"/.run/mosquitto/mosquitto.conf"*) ;;
        *) return 1 ;;
    esac
    log "port $MQ_PORT is held by the Weijian broker of another checkout (pid $pid: $cmd); stopping it"
    kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 1 300); do
        proc_alive "$pid" || return 0
        [ "$i" -lt 300 ] && sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    sleep 0.2
}

mq_start() {
    if port_open "$MQ_BIND" "$MQ_PORT"; then
        mq_take_over_port ||
            die "port $MQ_BIND:$MQ_PORT is taken by another process (not our broker); set WEIJIAN_BROKER_PORT"
        ! port_open "$MQ_BIND" "$MQ_PORT" || die "port $MQ_BIND:$MQ_PORT is still taken"
    fi
    rm -f "$MQ_PIDFILE"
    # Keep one old log once it passes 50 MB (tests connect a lot; nothing else rotates it).
    local logf="$MQ_DIR/log/mosquitto.log"
    if [ -f "$logf" ] && [ "$(stat -c %s "$logf")" -gt 52428800 ]; then mv -f "$logf" "$logf.1"; fi
    if [ "$(id -u)" -eq 0 ]; then chown -R "$(mq_user):" "$MQ_DIR"; fi
    log "starting mosquitto on $MQ_BIND:$MQ_PORT"
    # Daemonised, detached from our stdin/stdout (a CI runner must not wait on it).
    # 9>&-: nor our lock file descriptor.
    mosquitto -d -c "$MQ_CONF" </dev/null >>"$MQ_DIR/log/stderr.log" 2>&1 9>&- ||
        { tail -n 20 "$MQ_DIR/log/stderr.log" "$MQ_DIR/log/mosquitto.log" >&2 || true; die "mosquitto failed to start"; }
    for _ in $(seq 1 100); do
        mq_running && return 0
        sleep 0.1
    done
    tail -n 20 "$MQ_DIR/log/stderr.log" "$MQ_DIR/log/mosquitto.log" >&2 || true
    die "mosquitto did not come up on $MQ_BIND:$MQ_PORT"
}

# mosquitto_ctrl always exits 0; failures are only visible in its output.
CTRL_OUT=""
ctrl() {
    CTRL_OUT="$(mosquitto_ctrl -h "$MQ_BIND" -p "$MQ_PORT" -u "$MQ_ADMIN_USER" -P "$MQ_ADMIN_PASSWORD" \
        dynsec "$@" 2>&1 | grep -v -e 'running mosquitto_ctrl without encryption' \
        -e 'configuration changes you are making are visible' -e '^$' || true)"
    if grep -qiE 'error|refused|not authori' <<<"$CTRL_OUT"; then
        return 1
    fi
}

ctrl_or_die() {
    ctrl "$@" || die "mosquitto_ctrl dynsec $1 failed: $CTRL_OUT"
}

MQ_PROVISIONED_NOW=0
mq_provision() {
    local stamp="$MQ_DIR/provisioned" want
    want="$(printf '%s\n' v1 "$MQ_USER" "$MQ_PASSWORD" "$MQ_ROLE" "${MQ_ROLE_ACLS[@]}" | sha256sum | cut -c1-64)"
    [ "$(cat "$stamp" 2>/dev/null)" != "$want" ] || return 0
    log "provisioning dynamic security: role $MQ_ROLE, client $MQ_USER"
    if ! ctrl getDefaultACLAccess; then
        die "cannot administer the broker as $MQ_ADMIN_USER ($CTRL_OUT); remove .run/mosquitto to start afresh"
    fi
    # Explicit defaults: a client may only publish/subscribe where a role allows it.
    ctrl_or_die setDefaultACLAccess publishClientSend deny
    ctrl_or_die setDefaultACLAccess publishClientReceive allow
    ctrl_or_die setDefaultACLAccess subscribe deny
    ctrl_or_die setDefaultACLAccess unsubscribe allow
    ctrl getRole "$MQ_ROLE" || ctrl_or_die createRole "$MQ_ROLE"
    ctrl_or_die getRole "$MQ_ROLE"
    local role_acls acl type topic
    role_acls="$(tr -s ' ' <<<"$CTRL_OUT")"
    for acl in "${MQ_ROLE_ACLS[@]}"; do
        type="${acl%% *}" topic="${acl#* }"
        grep -qF " $type : allow : $topic (priority" <<<"$role_acls" ||
            ctrl_or_die addRoleACL "$MQ_ROLE" "$type" "$topic" allow
    done
    ctrl getClient "$MQ_USER" || ctrl_or_die createClient "$MQ_USER" -p "$MQ_PASSWORD"
    ctrl_or_die setClientPassword "$MQ_USER" "$MQ_PASSWORD"
    ctrl_or_die getClient "$MQ_USER"
    local client_info="$CTRL_OUT"
    # admin: the role created by "dynsec init"; lets the platform manage device accounts.
    grep -qE "[[:space:]]$MQ_ROLE \(priority" <<<"$client_info" || ctrl_or_die addClientRole "$MQ_USER" "$MQ_ROLE" 10
    grep -qE "[[:space:]]admin \(priority" <<<"$client_info" || ctrl_or_die addClientRole "$MQ_USER" admin 5
    echo "$want" >"$stamp"
    MQ_PROVISIONED_NOW=1
}

# Quick round trip as the platform account (retained message, then cleared), and an
# anonymous connection that must be refused.
mq_quick_check() {
    local topic="_services/check/$$" got
    local conn=(-h "$MQ_BIND" -p "$MQ_PORT")
    mosquitto_pub "${conn[@]}" -u "$MQ_USER" -P "$MQ_PASSWORD" -q 1 -r -t "$topic" -m ok ||
        die "mosquitto_pub as $MQ_USER failed"
    got="$(mosquitto_sub "${conn[@]}" -u "$MQ_USER" -P "$MQ_PASSWORD" -q 1 -t "$topic" -C 1 -W 5 2>&1 || true)"
    mosquitto_pub "${conn[@]}" -u "$MQ_USER" -P "$MQ_PASSWORD" -q 1 -r -n -t "$topic" || true
    [ "$got" = ok ] || die "publish/subscribe round trip as $MQ_USER failed: ${got:-timeout}"
    if mosquitto_sub "${conn[@]}" -t "$topic" -C 1 -W 2 >/dev/null 2>&1; then
        die "an anonymous client was able to connect to our broker"
    fi
}

# Deeper self-test (run after provisioning and by "services.sh check"). It uses its own
# topic root so that a running platform (subscribed to $share/ingest/weijian/v1/...) never
# sees its messages.
mq_deep_check() {
    local conn=(-h "$MQ_BIND" -p "$MQ_PORT") dev="svc-check-$$" pw="pw-$$-$RANDOM" out
    local root="_svccheck$$" tmp="$RUN/tmp-check"
    rm -rf "$tmp"
    mkdir -p "$tmp"
    ctrl deleteClient "$dev" || true
    ctrl deleteRole "$dev" || true
    ctrl_or_die createRole "$dev"
    ctrl_or_die addRoleACL "$dev" publishClientSend "$root/weijian/v1/$dev/#" allow
    ctrl_or_die createClient "$dev" -p "$pw"
    ctrl_or_die addClientRole "$dev" "$dev"

    # 1. a device publishes to its own topic -> the platform's shared subscription gets it
    mosquitto_sub "${conn[@]}" -u "$MQ_USER" -P "$MQ_PASSWORD" -V mqttv5 -q 1 \
        -t "\$share/ingest/$root/weijian/v1/+/telemetry" -v -C 1 -W 5 >"$tmp/shared" 2>&1 &
    local sub=$!
    sleep 0.3
    mosquitto_pub "${conn[@]}" -u "$dev" -P "$pw" -V mqttv5 -q 1 -d \
        -t "$root/weijian/v1/$dev/telemetry" -m hello >"$tmp/own" 2>&1 || true
    wait "$sub" || true
    grep -qx "$root/weijian/v1/$dev/telemetry hello" "$tmp/shared" ||
        die "shared subscription check failed: $(cat "$tmp/shared" "$tmp/own")"
    # 2. ... and is refused (PUBACK reason code 135) on another device's topic
    mosquitto_pub "${conn[@]}" -u "$dev" -P "$pw" -V mqttv5 -q 1 -d \
        -t "$root/weijian/v1/other/telemetry" -m x >"$tmp/other" 2>&1 || true
    grep -q 'RC:135' "$tmp/other" || die "device ACL check failed (expected reason code 135): $(cat "$tmp/other")"
    ctrl deleteClient "$dev" || true
    ctrl deleteRole "$dev" || true

    # 3. a 10 MB payload from the platform account reaches a subscriber intact
    head -c 7864320 /dev/urandom | base64 -w0 >"$tmp/big"
    mosquitto_sub "${conn[@]}" -u "$MQ_USER" -P "$MQ_PASSWORD" -q 1 -t "$root/big" \
        -C 1 -W 15 -N >"$tmp/big.got" 2>&1 &
    sub=$!
    sleep 0.3
    mosquitto_pub "${conn[@]}" -u "$MQ_USER" -P "$MQ_PASSWORD" -q 1 -t "$root/big" -f "$tmp/big" ||
        die "publishing a 10 MB payload failed"
    wait "$sub" || true
    cmp -s "$tmp/big" "$tmp/big.got" || die "10 MB payload did not arrive intact ($(wc -c <"$tmp/big.got") bytes)"
    out="$(wc -c <"$tmp/big")"
    rm -rf "$tmp"
    log "mosquitto self-test passed: shared subscription, device ACL (reason 135), ${out}-byte payload"
}

mosquitto_up() {
    apt_install mosquitto mosquitto-clients
    mkdir -p "$MQ_DIR/data" "$MQ_DIR/log"
    local new="$MQ_DIR/.mosquitto.conf.new"
    mq_render >"$new"

    if [ ! -f "$MQ_DYNSEC" ]; then
        mq_stop
        log "creating dynamic-security config ${MQ_DYNSEC#"$ROOT"/} (admin $MQ_ADMIN_USER)"
        rm -f "$MQ_DIR/provisioned"
        mosquitto_ctrl dynsec init "$MQ_DYNSEC" "$MQ_ADMIN_USER" "$MQ_ADMIN_PASSWORD" >/dev/null ||
            die "mosquitto_ctrl dynsec init failed"
    fi

    if mq_running && cmp -s "$new" "$MQ_CONF"; then
        rm -f "$new"
    else
        if mq_pid >/dev/null; then
            log "mosquitto config changed or broker unhealthy: restarting"
            mq_stop
        fi
        mv -f "$new" "$MQ_CONF"
        mq_start
    fi

    mq_provision
    mq_quick_check
    if [ "$MQ_PROVISIONED_NOW" = 1 ]; then
        mq_deep_check
    fi
    MQ_READY_LINE="mosquitto $MQ_BIND:$MQ_PORT ready (user $MQ_USER, dynsec admin $MQ_ADMIN_USER)"
}

# ----------------------------------------------------------------------------------------
cmd_up() {
    local t0=$SECONDS
    mkdir -p "$RUN"
    # Serialise concurrent runs (e.g. "make test" and "make demo" started together).
    exec 9>"$RUN/services.lock"
    flock -w 1800 9 || die "another services.sh is still running"
    PG_READY_LINE="" MQ_READY_LINE=""
    postgres_up
    mosquitto_up
    log "$PG_READY_LINE"
    log "$MQ_READY_LINE"
    [ $((SECONDS - t0)) -lt 5 ] || log "done in $((SECONDS - t0))s"
}

cmd_status() {
    local rc=0 port version
    port="$(pg_cluster_field 3 || true)"
    version="$(tsdb_installed_version 2>/dev/null || echo none)"
    if [ -n "$port" ] && pg_isready -q -h "$PG_HOST" -p "$port"; then
        log "postgres $PG_HOST:$port up (cluster $PG_VERSION/$PG_CLUSTER, timescaledb installed: $version," \
            "preloaded: $(psql_admin -At -c 'SHOW shared_preload_libraries' 2>/dev/null || echo '?'))"
    else
        log "postgres $PG_VERSION/$PG_CLUSTER down (timescaledb installed: $version)"
        rc=1
    fi
    if mq_running; then
        log "mosquitto $MQ_BIND:$MQ_PORT up (pid $(mq_pid), run dir ${MQ_DIR#"$ROOT"/})"
    else
        log "mosquitto $MQ_BIND:$MQ_PORT down"
        rc=1
    fi
    return $rc
}

cmd_check() {
    mq_running || die "our mosquitto is not running; run scripts/services.sh first"
    mq_quick_check
    mq_deep_check
}

cmd_stop() {
    mkdir -p "$RUN"
    exec 9>"$RUN/services.lock"
    flock -w 60 9 || die "another services.sh is still running"
    if mq_pid >/dev/null; then
        mq_stop
        log "mosquitto stopped"
    else
        log "mosquitto is not running"
    fi
}

main() {
    case "${1:-up}" in
        up | start) cmd_up ;;
        status) cmd_status ;;
        check) cmd_check ;;
        stop) cmd_stop ;;
        -h | --help | help) sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//' ;;
        *) die "unknown command '$1' (use: up, status, check, stop)" ;;
    esac
}

# Sourcing the file only defines the functions (handy for debugging one step).
if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    main "$@"
fi
