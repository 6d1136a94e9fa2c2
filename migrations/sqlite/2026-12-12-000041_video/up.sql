-- Video checks (kind 'video'): the session a check asks for, as JSON
-- ({"play_ms": 20000, "max_bitrate_kbps": 8000}); NULL for the other kinds. A video
-- result's figures (start-up delay, stall time) go into results.figures (000040).
ALTER TABLE checks ADD COLUMN video TEXT;
