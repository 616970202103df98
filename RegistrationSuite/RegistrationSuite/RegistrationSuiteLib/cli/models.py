"""``registration-suite models``: the shipped and user models, with their model cards."""

from __future__ import annotations

import json

HELP = "list the shipped and user models (name, source, kind, size, model card summary)"


def add_parser(sub):
    p = sub.add_parser(
        "models",
        help=HELP,
        description=(
            "Lists the models --model accepts: the shipped ones and those in the user models folder "
            "($REGISTRATION_SUITE_MODELS, else ~/.registration-suite/models; a user model shadows a shipped one "
            "of the same name), each with its kind, size, whether RegistrationSuite installed it (only those are "
            "ever deleted by 'clear') and its model card (NAME.md beside the file)."
        ),
    )
    p.add_argument("--user-dir",
                   help="user models folder (default: $REGISTRATION_SUITE_MODELS or ~/.registration-suite/models)")
    p.add_argument("--json", action="store_true", help="print the list as one JSON line")
    p.set_defaults(run=run)
    return p


def run(args) -> int:
    from ..models.registry import list_models, read_manifest, user_models_dir

    folder = user_models_dir(args.user_dir)
    installed = read_manifest(folder)
    rows = []
    for m in list_models(user_dir=args.user_dir):
        card = m.path.with_suffix(".md")
        rows.append(dict(m.to_dict(), card=str(card) if card.is_file() else None,
                         installed_by_registry=m.source == "user" and m.path.name in installed))
    if args.json:
        print(json.dumps({"user_models_dir": str(folder), "models": rows}, separators=(",", ":")))
        return 0
    print(f"user models folder: {folder}{'' if folder.is_dir() else ' (does not exist yet)'}")
    if not rows:
        print("no models")
    for r in rows:
        kind = r["kind"] or "?"
        print(f"{r['name']:28s} {r['source']:7s} {kind:12s} {r['size_bytes'] / 1e6:7.1f} MB  {r['summary']}")
        print(f"{'':28s} card: {r['card'] or 'none'}")
    return 0
