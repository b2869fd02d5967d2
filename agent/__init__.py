"""roadside-agent: the edge daemon of a roadside weigh-and-camera station.

Reading order follows a truck's data through the station:
``config`` → ``domain`` (pure types) → ``weighing`` → ``assemble`` (plates matched to
weighings) → ``legal`` (the verdict) → ``evidence`` (signed store) → ``uplink`` (MQTT) and
``station`` (the supervisor that wires the stages), with ``cli`` for technicians.
"""

__version__ = "0.1.0"
