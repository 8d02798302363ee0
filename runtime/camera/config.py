"""Parsed ``stpm-camera`` flags (command line merged over ``--config`` YAML) -> typed options.

The YAML merge itself is the one every command shares (:func:`stpm_edge.cli.args.parse_args`,
``yaml.safe_load``, unknown keys rejected); this module only checks what the camera needs and
builds :class:`~.loop.LoopOptions`.
"""

from __future__ import annotations

import argparse

from stpm_edge.errors import ConfigError, note

from .loop import LoopOptions


def check_required(args: argparse.Namespace) -> None:
    """``--model`` and ``--source`` may come from the flags or the config file, but must come;
    ``--station`` replaces both (its file names each camera's source and model)."""
    if getattr(args, "station", None):
        if args.source is not None:
            raise ConfigError(
                note("--source and --station both given", "list every camera in the station file")
            )
        return
    if not args.model or args.source is None:
        raise ConfigError(
            note("--model and --source are required", "give them as flags or in --config")
        )


def loop_options(args: argparse.Namespace) -> LoopOptions:
    """The :class:`LoopOptions` the flags describe."""
    return LoopOptions(
        log=args.log,
        save_ng=args.save_ng,
        max_frames=args.max_frames,
        duration=args.duration,
        batch=args.batch,
        realtime=args.realtime,
        on_end=args.on_end,
        reconnect_delay=args.reconnect_delay,
        max_reconnects=args.max_reconnects,
        stats_every=args.stats_every,
        display=args.display,
        trigger_cmd=args.trigger_cmd,
        trigger_url=args.trigger_url,
        source_name=str(args.source),
    )
