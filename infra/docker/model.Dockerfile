# The model function's container: CUDA runtime, Node 20, the native addon built in a build stage.
# Weights are not in the image: infra/docker/model-entry.sh syncs them from ULTRALONG_MODEL_URI
# (an HF directory in S3, bf16 safetensors) to local disk at start.
# Build context: the repository root (`docker build -f infra/docker/model.Dockerfile .`).

ARG CUDA=13.0.0
FROM nvidia/cuda:${CUDA}-devel-ubuntu24.04 AS build
RUN apt-get update && apt-get install -y --no-install-recommends curl ca-certificates cmake g++ make python3 \
 && curl -fsSL https://deb.nodesource.com/setup_20.x | bash - && apt-get install -y nodejs \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --omit=dev --ignore-scripts
COPY . .
# Builds the N-API addon against CUDA (native/build.mjs); fails the image if it cannot.
RUN ULTRALONG_BUILD_ADDON=1 REQUIRE_ADDON=1 node infra/build.mjs

FROM nvidia/cuda:${CUDA}-runtime-ubuntu24.04
RUN apt-get update && apt-get install -y --no-install-recommends curl ca-certificates unzip \
 && curl -fsSL https://deb.nodesource.com/setup_20.x | bash - && apt-get install -y nodejs \
 && curl -fsSL "https://awscli.amazonaws.com/awscli-exe-linux-$(uname -m).zip" -o /tmp/aws.zip \
 && unzip -q /tmp/aws.zip -d /tmp && /tmp/aws/install && rm -rf /tmp/aws /tmp/aws.zip /var/lib/apt/lists/*
WORKDIR /app
COPY --from=build /app /app
ENV NODE_ENV=production PORT=8080
EXPOSE 8080
ENTRYPOINT ["/app/infra/docker/model-entry.sh"]
