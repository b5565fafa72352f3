"""The rules a raw value must pass, stated once.

`pipelines.schemas` builds ingest's pandera checks from them and `pipelines.event_validation`
checks the online events with them, so a value the batch path quarantines is a value the live
path refuses, for the same reason. Plain data: serving imports it without pandera.

The delay bounds matter beyond hygiene: the feature graph partitions by time and relies on
them to know how far an event can be observed from its flight's scheduled time.
"""

from __future__ import annotations

DELAYED_MIN = 15  # the label: an arrival more than this late (the DOT's on-time definition)
MAX_DELAY_MIN = 24 * 60  # a departure or arrival later than a day is a data error here
MIN_DELAY_MIN = -180  # nothing leaves or lands more than 3 hours early
DELAY = (MIN_DELAY_MIN, MAX_DELAY_MIN)
CODE = r"^[A-Z0-9]{2,4}$"  # carriers and airports
TAILNUM = r"^[A-Z0-9]{2,7}$"
FLIGHT_NUMBER = (1, 99_999)
DISTANCE_MILES = (1, 12_000)
AIR_TIME_MIN = (1, 1_200)
YEAR = (1900, 2100)
# inclusive (low, high) per hourly weather observation, in the data set's units
WEATHER = {
    "temp": (-60, 140),  # F
    "dewp": (-80, 100),
    "humid": (0, 100),  # %
    "wind_dir": (0, 360),  # degrees
    "wind_speed": (0, 200),  # mph
    "wind_gust": (0, 250),
    "precip": (0, 20),  # inches
    "pressure": (850, 1100),  # millibars
    "visib": (0, 100),  # miles
}
