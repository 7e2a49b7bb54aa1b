# The PACS of docker-compose.yml: Orthanc from Debian's packages, with the project's
# configuration (deploy/orthanc.json; credentials from the environment).
FROM debian:bookworm-slim AS orthanc
RUN apt-get update && apt-get install -y --no-install-recommends orthanc orthanc-dicomweb \
    && rm -rf /var/lib/apt/lists/*
COPY deploy/orthanc.json /etc/pneumo/orthanc.json
EXPOSE 8042 4242
CMD ["Orthanc", "/etc/pneumo/orthanc.json"]

# One image for the web server, the workers, the beat scheduler and the PACS listener (the
# last stage: what `build: .` makes).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app

COPY requirements.txt .
# The CPU build of torch keeps the image small; pass TORCH_INDEX for another build.
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
RUN pip install --extra-index-url "$TORCH_INDEX" -r requirements.txt

COPY . .
RUN DEBUG=false SECRET_KEY=build-only PSEUDONYM_KEY=build-only python manage.py collectstatic --noinput -v0 \
    && useradd --create-home --uid 1000 app && mkdir -p /data && chown app /data
USER app
EXPOSE 8000
CMD ["gunicorn", "pneumo_site.wsgi", "--bind", "0.0.0.0:8000", "--workers", "3"]
