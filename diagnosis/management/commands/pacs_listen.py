from __future__ import annotations

import logging
import signal
import time

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import BaseCommand, CommandError

from diagnosis import services
from diagnosis.orthanc import Orthanc, OrthancError, OrthancMisconfigured

logger = logging.getLogger("diagnosis.pacs")


class Command(BaseCommand):
    help = (
        "The platform's link to its PACS (ORTHANC_URL): ingest the studies Orthanc receives and "
        "deliver the results back, every PACS_POLL_SECONDS, until stopped. The settings are "
        "checked first: a wrong URL, credentials or site stop it with the reason."
    )

    def add_arguments(self, parser):
        parser.add_argument("--once", action="store_true", help="one pass, then exit")

    def handle(self, *args, once: bool = False, **options):
        try:
            pacs = Orthanc.from_settings()
            info = services.pacs_check(pacs)
        except (OrthancError, ImproperlyConfigured) as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(
            f"PACS: Orthanc {info.get('Version')} at {pacs.url}, AE title "
            f"{info.get('DicomAet')}, polled every {settings.PACS_POLL_SECONDS} s"
        )
        stopping = []
        if not once:
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, lambda *_: stopping.append(True))
        failing = False
        while not stopping:
            try:
                taken = services.pacs_poll(pacs)
                delivered = services.pacs_deliver(pacs)
                if failing:
                    logger.info("Orthanc answers again")
                failing = False
            except OrthancMisconfigured as exc:
                raise CommandError(str(exc)) from None
            except OrthancError as exc:
                if not failing:  # said once per outage, not every poll
                    logger.warning("%s; trying again every %s s", exc, settings.PACS_POLL_SECONDS)
                failing, taken, delivered = True, 0, 0
            if once:
                self.stdout.write(f"Took {taken} instances, delivered {delivered} objects.")
                return
            if not (taken or delivered):
                time.sleep(settings.PACS_POLL_SECONDS)
