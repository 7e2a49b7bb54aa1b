from __future__ import annotations

from django.core.management.base import BaseCommand

from diagnosis import services


class Command(BaseCommand):
    help = (
        "Enqueue again predictions that should be queued but may not be (broker was down, "
        "worker died). The worker's beat schedule runs the same every SWEEP_INTERVAL_SECONDS."
    )

    def handle(self, *args, **options):
        self.stdout.write(f"Enqueued {services.predictions_sweep()} predictions.")
