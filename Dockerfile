# The consort image: operator, coordinator and site worker (one `consort` command).
# Not built on the development machines (no container engine there); CI for images builds it.
#
#   docker build -t ghcr.io/consort-dev/consort:0.1.0 .
#
# The native TF.js backend is built the project's way (scripts/tfjs-native.sh: libtensorflow from
# PyPI's wheel, the addon compiled against the image's Node, hard-linked into node_modules), never
# by tfjs-node's download. A GPU variant (tfjs-node-gpu on an NVIDIA CUDA 12 base) is not written
# yet: it needs a GPU machine to verify.
ARG BASE=node:24-bookworm-slim

FROM node:24-bookworm AS build
WORKDIR /src
RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-pip python3-venv g++ make && rm -rf /var/lib/apt/lists/*
COPY package.json package-lock.json .npmrc ./
RUN npm ci --ignore-scripts --no-audit --no-fund
COPY scripts/ scripts/
RUN node scripts/nats-js-patch.mjs
RUN CONSORT_CACHE=/cache bash scripts/tfjs-native.sh
COPY . .
RUN npx tsc -p tsconfig.build.json && npm prune --omit=dev --ignore-scripts

FROM ${BASE}
ENV NODE_ENV=production TF_CPP_MIN_LOG_LEVEL=2
WORKDIR /app
COPY --from=build /src/node_modules ./node_modules
COPY --from=build /src/dist ./dist
COPY --from=build /src/package.json ./
RUN ln -s /app/dist/cli/consort.js /usr/local/bin/consort && chmod +x /app/dist/cli/consort.js
# Non-root, as the operator's Pods require (runAsNonRoot, uid 65532).
USER 65532:65532
ENTRYPOINT ["consort"]
