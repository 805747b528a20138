"""Gestures to sound: a pose stream in, strikes and controls out, through MIDI, OSC or a log."""
