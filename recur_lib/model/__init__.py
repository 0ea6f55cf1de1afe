"""The model: unique blocks (blocks.py) run by a schedule (schedule.py), with the seeds' tricks."""
from .gpt import RecurGPT, build_model
from .schedule import Step, build_schedule, format_schedule

__all__ = ["RecurGPT", "build_model", "Step", "build_schedule", "format_schedule"]
