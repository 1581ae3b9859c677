#!/bin/sh
# One-shot, before the broker starts (the broker-users service of docker-compose.yml): writes the
# MQTT users of the stack into the broker's users file with passwords from the environment, so the
# broker never accepts anonymous clients. Re-running updates the passwords (`broker-user add` is
# create-or-update). Users:
#   ingest           role ingest   (subscribes to every gateway's topics)
#   api              role api      (reads, and publishes only bridge requests)
#   $GATEWAY_ID      role gateway  (publishes only under bacmqtt/$GATEWAY_ID/), for the native gateway
# More gateways: docker compose run --rm broker broker-user add --users /data/users.json gw2 --role gateway --gateway gw2
set -eu
: "${BACMQTT_USERS:=/data/users.json}"
: "${GATEWAY_ID:?GATEWAY_ID is not set}"
: "${MQTT_INGEST_PASSWORD:?MQTT_INGEST_PASSWORD is not set}"
: "${MQTT_API_PASSWORD:?MQTT_API_PASSWORD is not set}"
: "${MQTT_GATEWAY_PASSWORD:?MQTT_GATEWAY_PASSWORD is not set}"
BACMQTT=${BACMQTT:-node bin/bacmqtt.mjs}

add() { # name role password [gateway]
  if [ -n "${4:-}" ]; then
    printf '%s' "$3" | $BACMQTT broker-user add --users "$BACMQTT_USERS" "$1" --role "$2" --gateway "$4" --password-stdin
  else
    printf '%s' "$3" | $BACMQTT broker-user add --users "$BACMQTT_USERS" "$1" --role "$2" --password-stdin
  fi
}

add ingest ingest "$MQTT_INGEST_PASSWORD"
add api api "$MQTT_API_PASSWORD"
add "$GATEWAY_ID" gateway "$MQTT_GATEWAY_PASSWORD" "$GATEWAY_ID"
$BACMQTT broker-user list --users "$BACMQTT_USERS"
