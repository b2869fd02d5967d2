"""The pipeline: a truck's measurements become a vehicle, its photos and plates are taken,
and both are matched into one event (weighing → capture → assemble, with the plate vote)."""
