"""Face geometry for preprocessing: landmark backends, the mediapipe → iBUG-68 mapping, the fixed clip crop and
the landmark 3DMM coefficients (method.md §2), and the Deep3DFaceRecon/BFM coefficient backend (issue 18).

Submodules (imported explicitly; `landmarks` pulls in mediapipe / face_alignment only when a backend is built):
- `pipeline.faces.landmarks` — `FaceTrack`, `make_backend`, iBUG index groups;
- `pipeline.faces.mediapipe68` — `MEDIAPIPE_TO_68`, `mediapipe_to_68`, `TEMPLATE_68`;
- `pipeline.faces.crop` — `smooth_boxes`, `fixed_crop`, `apply_crop`, `transform_landmarks`;
- `pipeline.faces.coeffs` — `fit_pose`, `ExpressionBasis`, `coefficients` (73-d layout), `mouth_opening`;
- `pipeline.faces.bfm` — BFM landmark model, Deep3DFaceRecon's rotation and camera, SadTalker's 5-point `align_image`;
- `pipeline.faces.deep3d` — `ReconNet` (Deep3DFaceRecon's ResNet-50), `Deep3DEstimator` (`coeffs_backend: deep3d`).
"""
