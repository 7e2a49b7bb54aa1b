"""`python manage.py site_audit --site NAME [--data DIR --import-user USER] [--adapt]`: audit
the active model on a site's labeled cases, calibrate its threshold there, optionally adapt.

Example, a site onboarded from a labeled folder, half its cases kept for evaluation:

    python manage.py site_audit --site hospital-b --data var/site-b --import-user rita \\
        --calibration-fraction 0.5 --adapt --json var/site-b-audit.json
"""

from __future__ import annotations

from pathlib import Path

from django.core.exceptions import PermissionDenied
from django.core.management.base import BaseCommand, CommandError

from diagnosis import services
from diagnosis.management.operators import actor, operator
from diagnosis.services.sites import RULES


class Command(BaseCommand):
    help = (
        "Audit the active model on a site's labeled cases (a Kaggle-layout folder imported as "
        "the site's studies with its labels as reviews, or the site's reviewed studies): AUC "
        "with CI, figures at the threshold in force, a threshold calibrated on one part of the "
        "cases and measured on the other, and with --adapt a fine-tuned candidate."
    )

    def add_arguments(self, parser):
        parser.add_argument("--site", required=True, help="site name (made if new)")
        parser.add_argument("--title", default="", help="the site's title, when it is made")
        parser.add_argument("--data", type=Path, help="labeled folder (NORMAL/, PNEUMONIA/)")
        parser.add_argument(
            "--import-user",
            default="",
            help="radiologist or admin the imported labels are "
            "recorded as reviews of (needed with --data)",
        )
        parser.add_argument(
            "--user",
            default="",
            help="who runs the audit (audit trail); --activate and --promote need an admin "
            "(without --user the command acts as the system)",
        )
        parser.add_argument("--model", default="", help="model version (default: the active)")
        parser.add_argument(
            "--calibration-fraction",
            type=float,
            default=0.5,
            help="share of the cases used to calibrate (and adapt); the rest only evaluates",
        )
        parser.add_argument(
            "--rule",
            choices=RULES,
            default="sensitivity",
            help="threshold rule: highest with sensitivity >= target (default), "
            "lowest with specificity >= target, or Youden's J",
        )
        parser.add_argument("--target", type=float, default=0.95, help="the rule's target")
        parser.add_argument(
            "--repeats",
            type=int,
            default=20,
            help="further random splits for the mean/sd of the estimate",
        )
        parser.add_argument("--seed", type=int, default=0, help="seed of the split")
        parser.add_argument(
            "--activate",
            action="store_true",
            help="put the calibrated threshold (and the subtype's, where calibrated) in force "
            "(audited)",
        )
        parser.add_argument("--json", type=Path, help="write the audit here as JSON")
        adapt = parser.add_argument_group("adaptation")
        adapt.add_argument(
            "--adapt",
            action="store_true",
            help="also fine-tune on the calibration part (+ the base pool)",
        )
        adapt.add_argument("--base-data", default="", help="default: TRAINING_BASE_DATA")
        adapt.add_argument(
            "--limit-per-class",
            type=int,
            default=300,
            help="base images per class rehearsed (whole patients)",
        )
        adapt.add_argument(
            "--site-weight",
            type=float,
            help="the site's cases are repeated to carry this times the base pool's loss "
            "(default 0.5)",
        )
        adapt.add_argument(
            "--no-crossfit",
            dest="crossfit",
            action="store_false",
            help="choose the adapted model's threshold on the half of the calibration part it "
            "did not see, without a second fine-tune to score the other half (half the time)",
        )
        adapt.add_argument(
            "--threshold-from",
            choices=("mapped", "pooled", "first"),
            help="the adapted model's threshold is chosen on: both halves' out-of-fold scores, "
            "the second fine-tune's mapped onto the first's scale (mapped, the default), or as "
            "they are (pooled), or the first fine-tune's own half only (first, the default "
            "with --no-crossfit)",
        )
        adapt.add_argument("--freeze-epochs", type=int, help="default 1")
        adapt.add_argument("--epochs", type=int, help="unfrozen epochs, default 2")
        adapt.add_argument("--img-size", type=int, help="default: the model's")
        adapt.add_argument(
            "--promote",
            action="store_true",
            help="make the adapted model active if it passes the gate",
        )

    def handle(self, *args, **o):
        if not 0.0 < o["calibration_fraction"] < 1.0:
            raise CommandError("--calibration-fraction is within (0, 1)")
        if o["data"] is not None and not o["import_user"]:
            raise CommandError("--data needs --import-user: its labels are recorded as reviews")
        adapt_params = {
            k: o[k]
            for k in (
                "freeze_epochs",
                "epochs",
                "img_size",
                "limit_per_class",
                "site_weight",
                "threshold_from",
            )
            if o[k] is not None
        } | {
            "base_data": o["base_data"],
            "promote": o["promote"],
            "seed": o["seed"],
            "crossfit": o["crossfit"],
        }
        try:
            audit, _, row = services.site_onboard(
                site_name=o["site"], title=o["title"], data=o["data"],
                import_user=operator(o["import_user"]) if o["import_user"] else None,
                user=actor(o["user"]), version_name=o["model"], activate=o["activate"],
                echo=self.stdout.write, fraction=o["calibration_fraction"], rule=o["rule"],
                target=o["target"], repeats=o["repeats"], seed=o["seed"], adapt=o["adapt"],
                adapt_params=adapt_params,
            )  # fmt: skip
        except (ValueError, PermissionDenied) as exc:
            raise CommandError(str(exc)) from exc
        if row is not None:
            subtype = (
                ""
                if row.subtype_threshold is None
                else f" with subtype threshold {row.subtype_threshold:.4f}"
            )
            self.stdout.write(
                f"Threshold {row.threshold:.4f}{subtype} is in force at {audit.site.name}."
            )
        if o["json"] is not None:
            o["json"].parent.mkdir(parents=True, exist_ok=True)
            o["json"].write_text(services.audit_json(audit) + "\n")
        self.stdout.write(f"Audit {audit.pk} stored; see /sites/{audit.site.name}/")
