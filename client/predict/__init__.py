"""`fedmammo predict`: score mammograms with a trained model, show where it looked, and write results a PACS can show.

``model_file`` loads a model with its card (hash check, preprocessing), ``card_summary`` shows the card's key lines,
``one_image`` scores one file and maps its Grad-CAM back to the file's pixels, ``overlay`` draws it, ``records`` writes
``predictions.json``, ``run`` goes through the files, ``dicom_outputs`` makes the DICOM results (from what
``dicom_source`` and ``dicom_window`` take of the source) and ``dicom_files`` writes them, ``cli`` is the
subcommand. Each name below imports its submodule on first use (`common.lazy_exports`): registering the subcommand
imports neither torch nor highdicom.
"""

from common.lazy_exports import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "client.predict.cli": ("add_predict_parser", "run_predict"),
        "client.predict.model_file": ("PredictModel", "load_predict_model"),
        "client.predict.one_image": ("ImagePrediction", "predict_image"),
        "client.predict.run": ("PredictRun", "predict_files"),
        "client.predict.dicom_files": ("write_dicom_outputs",),
    },
)
