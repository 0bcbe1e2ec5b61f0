"""Do varlib's generation metrics mean something? Writes results/validate_metrics/<profile>/ (tables, provenance).

Real and corrupted image sets are scored against a held-apart half of the test split, on the profile's feature
classifier: a sample of real training images must score far better than blurred or noisy test images, FID must rise
with the blur and noise strength, IS of real images must approach the class count, and varlib's FID (torch-fidelity)
must equal an independent scipy Frechet distance on the same features, and FID must rise as classes are removed from
the scored set (mode dropping).

    .venv/bin/python scripts/validate_metrics.py --profile quick --n 2000
    .venv/bin/python scripts/validate_metrics.py --profile full --device cuda --out-dir /tmp/study   # as the runner

`python -m varlib.runner` runs it after the classifier, beside the notebooks that read the classifier.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import pandas as pd
import torch

from varlib.classifier import classifier_features
from varlib.cli import positive_int
from varlib.device import resolve_device
from varlib.metrics import degrade, drop_modes, frechet_distance, generation_metrics, metric_name
from varlib.report import Report
from varlib.study import Study

ROOT = Path(__file__).resolve().parents[1]
BLUR_SIGMAS = (0.5, 1.0, 1.5, 2.0, 3.0)
CLASSES_REMOVED = (1, 3, 5, 7)  # mode dropping: a sample of the test split without its first k classes
NOISE_STDS = (0.05, 0.1, 0.2, 0.4)  # in [-1, 1] units


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--profile", default="quick")
    p.add_argument("--n", type=positive_int,
                   help="images per scored set (default: 2000, or half the test split if smaller)")
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out-dir", type=Path, default=ROOT, help="results/ go under it (default: the checkout)")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(2)
    device = resolve_device(args.device)
    study = Study.create(args.profile, device=device)
    train, test = study.split("train"), study.split("test")
    half = len(test) // 2
    args.n = args.n or min(2000, half)
    report = Report("validate_metrics", vars(args), out_dir=args.out_dir, device=device, seed=args.seed,
                    profile=args.profile)
    clf = study.classifier()
    if args.n > half:
        raise SystemExit(f"--n {args.n} is larger than half the test split ({half}); pass --n {half} or less")
    gen = torch.Generator().manual_seed(args.seed)
    reference = test.images_u8[half:]  # scored sets below never contain these images
    pick = torch.randperm(half, generator=gen)[:args.n]
    test_sample, test_labels = test.images_u8[:half][pick], test.labels[:half][pick]
    sets = {("train sample", "none", 0.0): train.images_u8[torch.randperm(len(train), generator=gen)[:args.n]],
            ("test sample", "none", 0.0): test_sample}
    sets |= {("test sample", "blur sigma (px)", s): degrade(test_sample, blur_sigma=s) for s in BLUR_SIGMAS}
    sets |= {("test sample", "gaussian noise std", s): degrade(test_sample, noise_std=s, seed=args.seed)
             for s in NOISE_STDS}
    sets |= {("test sample", "classes removed", float(k)): drop_modes(test_sample, test_labels, k, args.n, args.seed)
             for k in CLASSES_REMOVED if k < test.num_classes}
    sets[("uniform noise", "none", 0.0)] = torch.randint(0, 256, test_sample.shape, generator=gen, dtype=torch.uint8)

    ref_features = classifier_features(clf, reference, device).numpy()
    fid_key = metric_name("FID", args.n, clf.label)
    rows = []
    for (images, corruption, strength), x in sets.items():
        out = generation_metrics(x, reference, clf, device)
        scipy_fid = frechet_distance(classifier_features(clf, x, device).numpy(), ref_features)
        rows.append({"images": images, "corruption": corruption, "strength": strength, **out,
                     "FID scipy reference": scipy_fid, "|FID - scipy|": abs(out[fid_key] - scipy_fid)})
        print(f"{images:14s} {corruption:20s} {strength:5.2f}  FID {out[fid_key]:9.3f}  scipy {scipy_fid:9.3f}")
    df = pd.DataFrame(rows)
    report.table(df, "metric_response")

    def fid(images, corruption="none", strength=0.0) -> float:
        sel = (df.images == images) & (df.corruption == corruption) & (df.strength == strength)
        return float(df.loc[sel, fid_key].iloc[0])

    is_key = metric_name("IS", args.n, clf.label)
    blur = df[df.corruption == "blur sigma (px)"][fid_key].tolist()
    noise = df[df.corruption == "gaussian noise std"][fid_key].tolist()
    dropped = [fid("test sample")] + df[df.corruption == "classes removed"][fid_key].tolist()
    is_real = float(df.loc[df.images == "test sample", is_key].iloc[0])
    checks = [
        ("classifier test accuracy", clf.test_accuracy, "recorded (full profile: >= 0.93)", True),
        ("FID(train sample) / FID(blur sigma 1)", fid("train sample") / fid("test sample", "blur sigma (px)", 1.0),
         "< 0.2", fid("train sample") < 0.2 * fid("test sample", "blur sigma (px)", 1.0)),
        ("FID(blur sigma 1) / FID(uniform noise)", fid("test sample", "blur sigma (px)", 1.0) / fid("uniform noise"),
         "< 1", fid("test sample", "blur sigma (px)", 1.0) < fid("uniform noise")),
        ("FID monotone in blur sigma", float(blur == sorted(blur)), "1", blur == sorted(blur)),
        ("FID monotone in noise std", float(noise == sorted(noise)), "1", noise == sorted(noise)),
        ("FID rises as classes are removed (mode dropping)", float(dropped == sorted(dropped)), "1",
         dropped == sorted(dropped)),
        (f"IS of real test images (upper bound {test.num_classes})", is_real, f"> {0.7 * test.num_classes:g}",
         is_real > 0.7 * test.num_classes),
        ("IS of uniform noise", float(df.loc[df.images == "uniform noise", is_key].iloc[0]), "< 2",
         float(df.loc[df.images == "uniform noise", is_key].iloc[0]) < 2),
        ("max |FID - scipy reference|", float(df["|FID - scipy|"].max()), "< 1e-3", df["|FID - scipy|"].max() < 1e-3),
    ]
    report.table(pd.DataFrame(checks, columns=["check", "value", "expected", "pass"]), "checks")
    report.note(classifier=str(clf.path), classifier_digest=clf.digest, classifier_test_accuracy=clf.test_accuracy,
                n_reference=len(reference), n_scored=args.n)
    print(pd.DataFrame(checks, columns=["check", "value", "expected", "pass"]).to_string(index=False))


if __name__ == "__main__":
    main()
