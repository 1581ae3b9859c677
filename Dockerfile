# syntax=docker/dockerfile:1
# One image for every Node service of bacmqtt (broker, ingest, migrate, api, and the gateway under
# the Linux host-network profile). Multi-stage: the first stage installs production dependencies
# from the lockfile, the second copies them next to the sources and runs as the unprivileged `node`
# user (uid 1000) of the official image. There is no build step: bin/bacmqtt.mjs runs the
# TypeScript sources through tsx, which is a production dependency.

# Pinned: Node 24 is the active LTS line (the project supports 20, 22 and 24).
ARG NODE_IMAGE=node:24.18.0-bookworm-slim

FROM ${NODE_IMAGE} AS deps
WORKDIR /app
COPY package.json package-lock.json ./
# --ignore-scripts: the only install script in the tree is esbuild's, which merely checks the
# platform binary it already gets from its optional @esbuild/* dependency.
RUN npm ci --omit=dev --ignore-scripts --no-audit --no-fund \
 && npm cache clean --force

FROM ${NODE_IMAGE} AS runtime
ENV NODE_ENV=production \
    BACMQTT_LOG_LEVEL=info
WORKDIR /app
COPY --from=deps /app/node_modules ./node_modules
COPY package.json package-lock.json ./
COPY bin ./bin
COPY cli ./cli
COPY common ./common
COPY contract ./contract
COPY gateway ./gateway
COPY broker ./broker
COPY ingest ./ingest
COPY api ./api
COPY simulator ./simulator
COPY deploy/docker/healthcheck.mjs ./deploy/docker/healthcheck.mjs
# /data is the only writable place: broker persistence, the gateway's store-and-forward buffer.
RUN mkdir -p /data && chown node:node /data
USER node
VOLUME ["/data"]
ENTRYPOINT ["node", "bin/bacmqtt.mjs"]
CMD ["--help"]
