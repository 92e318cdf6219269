"""Organ dosimetry for radionuclide therapy, from quantitative SPECT/CT to absorbed dose.

Per organ and time point an activity is read from the SPECT; the modules here
carry it to a dose: the therapy nuclide's physical data (:mod:`.nuclides`),
the fit and analytic integral of the organ's time-activity curve
(:mod:`.time_activity`), and the MIRD self-dose with local deposition of the
electron energy (:mod:`.absorbed_dose`). Those three work on numbers only, so
a patient's course can be recomputed, and tested against analytic truth,
without any image or DICOM file.
"""
