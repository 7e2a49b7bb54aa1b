from __future__ import annotations

from django.core.management.base import BaseCommand

from diagnosis import services


class Command(BaseCommand):
    help = (
        "Enqueue again predictions that should be queued but may not be (broker was down, "
        "worker died): a task per batch of pending ones, one per prediction taken back from a "
        "dead worker. The worker's beat schedule runs the same every SWEEP_INTERVAL_SECONDS."
    )

    def handle(self, *args, **options):
        self.stdout.write(f"Sent {services.predictions_sweep()} prediction tasks.")
