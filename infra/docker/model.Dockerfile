# The model function's container: the CUDA runtime with cuBLAS and cuDNN (the engine loads
# cuBLASLt at run time), Node 22, and the image contents built by infra/docker/build-model-image.sh
# (npm dependencies, WASM kernels, emscripten module, the N-API addon with the CUDA kernels; dev
# dependencies pruned). Weights are not in the image: infra/docker/model-entry.sh syncs them from
# ULTRALONG_MODEL_URI (an HF directory in S3) to local disk at start.
#
#   docker build -f infra/docker/model.Dockerfile -t ultralong-model .     (from the repository root)
#
# The build stage needs no GPU: nvcc and cudart are enough (docs/deploy.md).

ARG CUDA=13.0.0
FROM nvidia/cuda:${CUDA}-devel-ubuntu24.04 AS build
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
 && apt-get install -y --no-install-recommends curl ca-certificates g++ make python3 \
 && curl -fsSL https://deb.nodesource.com/setup_22.x | bash - \
 && apt-get install -y --no-install-recommends nodejs \
 && apt-get install -y --no-install-recommends emscripten node-acorn \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY . .
RUN infra/docker/build-model-image.sh

FROM nvidia/cuda:${CUDA}-cudnn-runtime-ubuntu24.04
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
 && apt-get install -y --no-install-recommends curl ca-certificates unzip \
 && curl -fsSL https://deb.nodesource.com/setup_22.x | bash - \
 && apt-get install -y --no-install-recommends nodejs \
 && curl -fsSL "https://awscli.amazonaws.com/awscli-exe-linux-$(uname -m).zip" -o /tmp/aws.zip \
 && unzip -q /tmp/aws.zip -d /tmp && /tmp/aws/install && rm -rf /tmp/aws /tmp/aws.zip /var/lib/apt/lists/*
WORKDIR /app
COPY --from=build /app /app
ENV NODE_ENV=production PORT=8080
EXPOSE 8080
ENTRYPOINT ["/app/infra/docker/model-entry.sh"]
