from __future__ import annotations

from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from diagnosis import services
from diagnosis.management.operators import operator
from diagnosis.models import ModelVersion


class Command(BaseCommand):
    help = (
        "Build an optimized inference artifact of a model version (torch-bf16, onnx-fp32, "
        "onnx-int8), compare it with the version's fp32 on the validation images, and keep it "
        "only if its AUC drops by at most 0.005 and its sensitivity at the stored threshold by "
        "at most 0.5 points. Workers use it when INFERENCE_RUNTIME names that runtime."
    )

    def add_arguments(self, parser):
        parser.add_argument("name", help="Model version name.")
        parser.add_argument(
            "--runtime", required=True, choices=["torch-bf16", "onnx-fp32", "onnx-int8"]
        )
        parser.add_argument(
            "--data", type=Path, help="labeled folder or manifest (default: the validation split)"
        )
        parser.add_argument("--user", default="", help="User name recorded as the builder.")

    def handle(self, *args, name, runtime, data, user, **options):
        version = ModelVersion.objects.filter(name=name).first()
        if version is None:
            raise CommandError(f"No model version named {name!r}.")
        try:
            artifact = services.runtime_artifact_create(
                version=version, runtime=runtime, data=data, user=operator(user)
            )
        except services.RuntimeRejected as exc:
            self.stdout.write(_table(exc.comparison))
            raise CommandError(f"{runtime} refused: {exc}") from None
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(_table(artifact.comparison))
        self.stdout.write(f"{runtime} accepted for {version.name}: INFERENCE_RUNTIME={runtime}")


def _table(c: dict) -> str:
    ref, cand, at = c["reference"], c["candidate"], f"@ {c['threshold']:.3f}"
    rows = [("", "torch fp32", c["runtime"])] + [
        (f"{key} {at}" if key != "auc" else "AUC", f"{ref[key]:.4f}", f"{cand[key]:.4f}")
        for key in ("auc", "sensitivity", "specificity")
    ]
    lines = [f"{a:<24}{b:>12}{d:>14}" for a, b, d in rows]
    lines.append(
        f"n={c['n']}; AUC drop {c['auc_drop']:+.4f}, sensitivity drop "
        f"{100 * c['sensitivity_drop']:+.2f} points; largest |P difference| "
        f"{c['max_abs_difference']:.4f}; {c['reason']}"
    )
    return "\n".join(lines)
