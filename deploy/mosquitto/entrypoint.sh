#!/bin/sh
# Entry point of the "broker" service in docker-compose.yml (image eclipse-mosquitto:2.0,
# Alpine/busybox sh). It replaces the image's /docker-entrypoint.sh:
#
#   1. on first start, creates /mosquitto/data/dynamic-security.json with the dynsec admin
#      (WEIJIAN_MQTT_ADMIN_USER, default weijian-admin / WEIJIAN_MQTT_ADMIN_PASSWORD);
#   2. starts, in the background, a one-shot provisioner that waits for the broker and then
#      makes sure the role "weijian-platform" and the platform client "weijian"
#      (password WEIJIAN_MQTT_PASSWORD, roles weijian-platform + admin) exist. It runs on
#      every start, so changing WEIJIAN_MQTT_PASSWORD and restarting rotates the password;
#   3. execs mosquitto in the foreground.
#
# MOSQUITTO_DYNSEC_FILE and MOSQUITTO_PORT only need changing to try this script outside
# the container; they must match plugin_opt_config_file and the listener of the config.
# shellcheck disable=SC2016  # '$SYS/...' and '$CONTROL/...' are MQTT topics, not expansions
set -eu

CONF=/mosquitto/config/mosquitto.conf
DYNSEC="${MOSQUITTO_DYNSEC_FILE:-/mosquitto/data/dynamic-security.json}"
PORT="${MOSQUITTO_PORT:-1883}"
ADMIN_USER="${WEIJIAN_MQTT_ADMIN_USER:-weijian-admin}"
ADMIN_PASSWORD="${WEIJIAN_MQTT_ADMIN_PASSWORD:?set WEIJIAN_MQTT_ADMIN_PASSWORD}"
PLATFORM_USER=weijian
PLATFORM_PASSWORD="${WEIJIAN_MQTT_PASSWORD:?set WEIJIAN_MQTT_PASSWORD}"
ROLE=weijian-platform

log() { echo "entrypoint: $*"; }

if [ ! -f "$DYNSEC" ]; then
    log "creating $DYNSEC (admin $ADMIN_USER)"
    mosquitto_ctrl dynsec init "$DYNSEC" "$ADMIN_USER" "$ADMIN_PASSWORD" >/dev/null
fi
if [ "$(id -u)" = 0 ]; then
    # mosquitto drops privileges to user mosquitto; it must be able to write its data.
    chown -R mosquitto:mosquitto "$(dirname "$DYNSEC")" /mosquitto/data /mosquitto/log 2>/dev/null || true
fi

# mosquitto_ctrl exits 0 even when a command fails: look at what it prints.
ctrl() {
    out="$(mosquitto_ctrl -h 127.0.0.1 -p "$PORT" -u "$ADMIN_USER" -P "$ADMIN_PASSWORD" dynsec "$@" 2>&1 |
        grep -v -e 'without encryption' -e 'visible on the network' -e '^$' || true)"
    case "$out" in
        *rror* | *efused* | *uthori*) return 1 ;;
    esac
    return 0
}

must() {
    ctrl "$@" || { log "ERROR: mosquitto_ctrl dynsec $*: $out"; return 1; }
}

provision() {
    i=0
    until mosquitto_sub -h 127.0.0.1 -p "$PORT" -u "$ADMIN_USER" -P "$ADMIN_PASSWORD" \
        -t '$SYS/broker/version' -C 1 -W 2 >/dev/null 2>&1; do
        i=$((i + 1))
        if [ "$i" -ge 60 ]; then
            log "ERROR: cannot reach the broker as $ADMIN_USER; the platform account is NOT provisioned"
            return 1
        fi
        sleep 1
    done
    must setDefaultACLAccess publishClientSend deny || return 1
    must setDefaultACLAccess publishClientReceive allow || return 1
    must setDefaultACLAccess subscribe deny || return 1
    must setDefaultACLAccess unsubscribe allow || return 1
    ctrl getRole "$ROLE" || must createRole "$ROLE" || return 1
    must getRole "$ROLE" || return 1
    acls="$(echo "$out" | tr -s ' ')"
    # "#" as subscribePattern also covers $share/<group>/... filters.
    for acl in 'publishClientSend #' 'publishClientReceive #' 'subscribePattern #' \
        'unsubscribePattern #' \
        'publishClientSend $CONTROL/dynamic-security/#' \
        'publishClientReceive $CONTROL/dynamic-security/#' \
        'subscribePattern $CONTROL/dynamic-security/#' \
        'publishClientReceive $SYS/#' 'subscribePattern $SYS/#'; do
        type="${acl%% *}"
        topic="${acl#* }"
        case "$acls" in
            *" $type : allow : $topic (priority"*) ;;
            *) must addRoleACL "$ROLE" "$type" "$topic" allow || return 1 ;;
        esac
    done
    ctrl getClient "$PLATFORM_USER" || must createClient "$PLATFORM_USER" -p "$PLATFORM_PASSWORD" || return 1
    must setClientPassword "$PLATFORM_USER" "$PLATFORM_PASSWORD" || return 1
    must getClient "$PLATFORM_USER" || return 1
    roles="$out"
    case "$roles" in *" $ROLE (priority"*) ;; *) must addClientRole "$PLATFORM_USER" "$ROLE" 10 || return 1 ;; esac
    case "$roles" in *" admin (priority"*) ;; *) must addClientRole "$PLATFORM_USER" admin 5 || return 1 ;; esac
    log "platform account $PLATFORM_USER provisioned (roles $ROLE, admin)"
}

if [ "$#" -eq 0 ]; then
    set -- /usr/sbin/mosquitto -c "$CONF"
fi
# Detached (double fork) so that the init process (compose "init: true") reaps it.
(provision &)
exec "$@"
