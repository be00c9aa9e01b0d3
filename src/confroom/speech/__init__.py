"""Speech input: the `Recognizer` interface, utterance detection, and the offline recognizer.

`recognizer` owns the interface (`Recognizer`, `Transcript`), the vendor registry
(`recognizer_for`) and `UtteranceDetector` (sans-IO speech start/end from 20 ms frames);
`sphinx` owns the pocketsphinx implementation (vendor `default`).
"""
