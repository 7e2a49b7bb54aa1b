#!/usr/bin/env bash
# Brings up the whole platform on one machine with embedded defaults: a virtualenv, the
# SQLite database in var/, demo accounts, a Celery worker for predictions (with the
# sweeper's schedule), a second one for retraining, and the web server on
# http://127.0.0.1:8000. Redis is the broker when it answers on
# 127.0.0.1:6379; otherwise kombu's filesystem transport in var/broker stands in.
#
# If no model is active yet and the Kermany training data is at ../shared/data/chest_xray
# (or DEMO_DATA), a demo model is trained in the background (fine-tuned from offline
# ImageNet weights, about 5 minutes) and activated; uploads made meanwhile wait and are
# predicted as soon as it is active. It is a demo, not a clinical model.
#
# When Debian's orthanc package is installed (and ORTHANC_URL is not set), an Orthanc of the
# project's runs as the PACS (HTTP 127.0.0.1:8042, DICOM port 4242, storage in var/orthanc)
# with the listener that ingests its studies and sends results back (README, "PACS").
# Ctrl-C stops everything this script started.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
PORT=${PORT:-8000}
DEMO_DATA=${DEMO_DATA:-../shared/data/chest_xray/train}
DEMO_MODEL=var/models/demo.pt
mkdir -p var/log var/models
# Retraining starts from the base data set plus the reviewed studies.
if [ -z "${TRAINING_BASE_DATA:-}" ] && [ -d "$DEMO_DATA" ]; then
  export TRAINING_BASE_DATA=$(cd "$DEMO_DATA" && pwd)
fi

if [ ! -x .venv/bin/python ]; then
  echo "==> Creating .venv"
  "$PYTHON" -m venv .venv
fi
echo "==> Installing requirements (first time: a few minutes)"
.venv/bin/pip install -q -r requirements.txt
PY=.venv/bin/python

if [ -z "${CELERY_BROKER_URL:-}" ]; then
  if "$PY" -c "import redis; redis.Redis(socket_connect_timeout=1).ping()" 2>/dev/null; then
    export CELERY_BROKER_URL=redis://127.0.0.1:6379/0
    echo "==> Broker: Redis at 127.0.0.1:6379"
  else
    export CELERY_BROKER_URL=filesystem://
    mkdir -p var/broker
    echo "==> Broker: embedded (kombu filesystem transport in var/broker; Redis did not answer)"
  fi
fi

echo "==> Database: ${DATABASE_URL:-SQLite in var/db.sqlite3}"
"$PY" manage.py migrate --noinput -v0

if [ ! -f var/demo-credentials.txt ]; then
  "$PY" manage.py create_demo_users > var/demo-credentials.txt
fi
echo "==> Demo accounts (also in var/demo-credentials.txt):"
cat var/demo-credentials.txt

pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM

# Runs "$@" again whenever it exits, until told to stop (as docker-compose's restart policy
# does): kombu 5.7 ends a worker when Redis goes away with a task unacknowledged, and the
# predictions it held are then redelivered or swept by the restarted one.
respawn() {
  local child
  trap 'kill "$child" 2>/dev/null; wait "$child"; exit 0' TERM INT
  while true; do
    "$@" &
    child=$!
    wait "$child" && status=0 || status=$?
    echo "==> exited with status $status; starting it again in 2 s"
    sleep 2
  done
}

QUEUE=${CELERY_TASK_DEFAULT_QUEUE:-pneumo}
echo "==> Starting the prediction worker (log: var/log/worker.log)"
respawn "$PY" -m celery -A pneumo_site worker --beat --concurrency 1 --loglevel INFO \
  -Q "$QUEUE" -n "predict@%h" > var/log/worker.log 2>&1 &
pids+=($!)
echo "==> Starting the training worker (log: var/log/training-worker.log)"
respawn "$PY" -m celery -A pneumo_site worker --concurrency 1 --loglevel INFO \
  -Q "${TRAINING_QUEUE:-$QUEUE-training}" -n "training@%h" > var/log/training-worker.log 2>&1 &
pids+=($!)

rm -f var/demo-training.json  # left by a demo training an earlier run was stopped in
has_model=$("$PY" manage.py shell -v 0 -c \
  "from diagnosis.models import ModelVersion as M; print(int(M.objects.filter(is_active=True).exists()))")
if [ "$has_model" = 0 ]; then
  if [ -f "$DEMO_MODEL" ]; then
    "$PY" manage.py register_model "$DEMO_MODEL" --name demo --activate --demo \
      --note "A demo model (var/models/demo.pt); not validated at any site." || true
  elif [ -d "$DEMO_DATA" ]; then
    # ml.train's default recipe, short, fine-tuned from ImageNet weights that load offline
    # (ResNet34 when torch.hub's cache has them, else EfficientNet-Lite0's packaged ones);
    # from scratch (a quick ResNet34) only when neither is at hand.
    arch=$("$PY" -c "from ml.models import offline_pretrained_arch as a; print(a() or '')")
    if [ -n "$arch" ]; then
      flags=(--arch "$arch" --pretrained imagenet --freeze-epochs 1 --epochs 2)
    else
      arch=resnet34
      flags=(--arch resnet34 --pretrained none --recipe fastai --limit-per-class 800 --epochs 3
              --lr 1e-3)
    fi
    echo "==> No model yet: training a DEMO $arch model on $DEMO_DATA in the background"
    echo "    (log: var/log/train-demo.log, about 5 minutes); uploads wait until it is active."
    # The pages read this while no model is active: "a demo model is being trained since...".
    # About 6 minutes: measured from a fresh clone, README "The demo model".
    printf '{"started_at": %s, "expected_seconds": 360}\n' "$(date +%s)" > var/demo-training.json
    ( "$PY" -m ml.train --data "$DEMO_DATA" "${flags[@]}" --img-size 160 \
        --test-split acquisition --out "$DEMO_MODEL" \
      && "$PY" manage.py register_model "$DEMO_MODEL" --name "demo-${arch//_/-}" --activate \
           --demo --note "A demo, trained in minutes on the public training set by make up; \
not validated at any site. Calibrate it with site_audit before trusting its calls (README)."
      status=$?; rm -f var/demo-training.json
      # Its figures and plots on the two splits ml.train wrote, for the models page.
      for split in val test; do
        [ $status = 0 ] && [ -f "${DEMO_MODEL%.pt}.$split.csv" ] && "$PY" manage.py evaluate \
          --data "${DEMO_MODEL%.pt}.$split.csv" --model "demo-${arch//_/-}"
      done
      exit $status
    ) > var/log/train-demo.log 2>&1 &
    pids+=($!)
  else
    echo "==> No model is active. Train one with .venv/bin/python -m ml.train (see README), then"
    echo "    .venv/bin/python manage.py register_model PATH --activate"
  fi
fi

# The PACS: Orthanc from Debian's packages when present, or the one ORTHANC_URL names.
if [ -z "${ORTHANC_URL:-}" ] && command -v Orthanc > /dev/null; then
  ORTHANC_HTTP_PORT=${ORTHANC_HTTP_PORT:-8042}
  ORTHANC_DICOM_PORT=${ORTHANC_DICOM_PORT:-4242}
  if [ ! -f var/orthanc-credentials.txt ]; then
    "$PY" -c "import secrets; print('pneumo', secrets.token_urlsafe(18))" > var/orthanc-credentials.txt
  fi
  read -r ORTHANC_USERNAME ORTHANC_PASSWORD < var/orthanc-credentials.txt
  export ORTHANC_URL=http://127.0.0.1:$ORTHANC_HTTP_PORT ORTHANC_USERNAME ORTHANC_PASSWORD
  respawn "$PY" scripts/orthanc.py --dir var/orthanc --http-port "$ORTHANC_HTTP_PORT" \
    --dicom-port "$ORTHANC_DICOM_PORT" --modality MODALITY=MODALITY@11112 \
    > var/log/orthanc.log 2>&1 &
  pids+=($!)
  echo "==> PACS: Orthanc at $ORTHANC_URL (user and password in var/orthanc-credentials.txt),"
  echo "    DICOM port $ORTHANC_DICOM_PORT, AE title PNEUMO-PACS; it takes C-STOREs from AE title"
  echo "    MODALITY on 127.0.0.1 (log: var/log/orthanc.log)"
elif [ -z "${ORTHANC_URL:-}" ]; then
  echo "==> PACS: none (apt-get install orthanc orthanc-dicomweb, then make up again, starts one)"
fi
if [ -n "${ORTHANC_URL:-}" ]; then
  echo "==> Starting the PACS listener for $ORTHANC_URL (log: var/log/pacs.log)"
  respawn "$PY" manage.py pacs_listen > var/log/pacs.log 2>&1 &
  pids+=($!)
fi

echo "==> Web server on http://127.0.0.1:$PORT/ (Ctrl-C stops everything)"
"$PY" -m gunicorn pneumo_site.wsgi --bind "127.0.0.1:$PORT" --workers 2 --threads 4 \
  --access-logfile - &
web=$!
pids+=("$web")
# Stop when the web server stops (the workers are started again when they stop, and the
# demo training may end on its own).
wait "$web"
