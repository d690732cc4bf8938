"""Editor bridges: Audacity (mod-script-pipe) and REAPER (ReaScript actions)."""
