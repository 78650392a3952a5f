"""Mapping from mediapipe's 478-point face mesh to the 68-point iBUG (300-W) convention, and the 68-point template.

Target convention (iBUG 68, 0-based): jaw 0–16, brows 17–26, nose 27–35, eyes 36–47, outer lip 48–59, inner lip
60–67. "Right"/"left" are the *subject's*: point 36 is the subject's right eye outer corner, on the image left.

How the table was derived (mediapipe 0.10.21, `refine_landmarks=True`; the iris points 468–477 are not used):

1. Topology from `mediapipe.solutions.face_mesh_connections`: the eyelid paths of FACEMESH_RIGHT_EYE between the
   corners 33 (outer) and 133 (inner), the upper brow edge of FACEMESH_RIGHT_EYEBROW (70 → 107), the midline chain
   of FACEMESH_NOSE (168 → 4) and its lower outline (2 → 97 → 98), the outer and inner loops of FACEMESH_LIPS
   (corners 61/291 and 78/308, midline 0/17 and 13/14), and FACEMESH_FACE_OVAL from 127 (at the height of the eye
   corner, where iBUG's jaw starts) down to the chin 152.
2. Geometry from mediapipe's canonical face model (`canonical_face_model.obj` of the mediapipe repository; not
   shipped in the wheel): each iBUG point that sits at a fraction of a contour (e.g. eyelid points at 1/3 and 2/3,
   jaw points at k/8 of the arc from 127 to 152) was placed by frontal (x, y) arc length along that path; if it
   fell within a quarter segment of a vertex that vertex was taken, otherwise the mean of the two vertices of the
   segment ("pairs" below). The subject's left side is the exact mirror image (mirror vertex in the symmetric
   canonical model).
3. Checked visually on `skimage.data.astronaut()` (indices drawn next to the points; left/right, lid order and lip
   order as in iBUG). Known differences from manual iBUG annotation: mediapipe's jaw follows a fixed mesh contour
   (the 3D cheek line), not the visible silhouette, so under strong yaw jaw points stay on the mesh; eyebrows use
   the upper brow edge as iBUG does.

`TEMPLATE_68` is the canonical face model mapped through the same table, in the project's coordinates
(`pipeline.geometry`: x right, y down, z away from the camera, frontal face looking towards −z), centred on the
mean of the rigid points 17–47 and scaled to unit outer-eye-corner distance (|p36 − p45| = 1). Its depth scale was
checked against mediapipe output on astronaut (a similarity fit with the template depth scaled by 0.6…1.4 is
best at 1.0), so it is directly comparable with mediapipe's (x, y, z) landmarks. Its mouth is slightly open
(inner-lip gap 0.06).
"""

from __future__ import annotations

import numpy as np

NUM_MESH_POINTS = 478  # with refine_landmarks=True (468 mesh + 10 iris points)
NUM_POINTS_68 = 68

# For each iBUG point: the mediapipe vertex, or two vertices to average.
MEDIAPIPE_TO_68: tuple[tuple[int, ...], ...] = (
    # jaw: 0 = subject's right (image left), ear level; 8 = chin (mesh 152); 16 = subject's left
    (127,),  # 0
    (234,),  # 1
    (93, 132),  # 2
    (132, 58),  # 3
    (58, 172),  # 4
    (136,),  # 5
    (150, 149),  # 6
    (176, 148),  # 7
    (152,),  # 8
    (400, 377),  # 9
    (379, 378),  # 10
    (365,),  # 11
    (288, 397),  # 12
    (361, 288),  # 13
    (323, 361),  # 14
    (454,),  # 15
    (356,),  # 16
    # right brow (image left), outer -> inner, upper edge 70-63-105-66-107
    (70,),  # 17
    (63,),  # 18
    (105, 66),  # 19
    (66,),  # 20
    (107,),  # 21
    # left brow, inner -> outer
    (336,),  # 22
    (296,),  # 23
    (334, 296),  # 24
    (293,),  # 25
    (300,),  # 26
    # nose bridge 168 -> tip 4
    (168,),  # 27
    (6, 197),  # 28
    (195, 5),  # 29
    (4,),  # 30
    # nostril base, image left -> right; 33 = subnasale (mesh 2)
    (98,),  # 31
    (97,),  # 32
    (2,),  # 33
    (326,),  # 34
    (327,),  # 35
    # right eye (image left): 36 outer corner 33, 39 inner corner 133
    (33,),  # 36
    (160,),  # 37
    (158,),  # 38
    (133,),  # 39
    (153,),  # 40
    (144,),  # 41
    # left eye: 42 inner corner 362, 45 outer corner 263
    (362,),  # 42
    (385,),  # 43
    (387,),  # 44
    (263,),  # 45
    (373,),  # 46
    (380,),  # 47
    # outer lip: 48 corner 61, 51 top (mesh 0), 54 corner 291, 57 bottom (mesh 17)
    (61,),  # 48
    (40, 39),  # 49
    (39, 37),  # 50
    (0,),  # 51
    (269, 267),  # 52
    (270, 269),  # 53
    (291,),  # 54
    (321,),  # 55
    (405, 314),  # 56
    (17,),  # 57
    (181, 84),  # 58
    (91,),  # 59
    # inner lip: 60 corner 78, 62 top (mesh 13), 64 corner 308, 66 bottom (mesh 14)
    (78,),  # 60
    (81,),  # 61
    (13,),  # 62
    (311,),  # 63
    (308,),  # 64
    (402,),  # 65
    (14,),  # 66
    (178,),  # 67
)

# (68,) index arrays: point k = (mesh[_A[k]] + mesh[_B[k]]) / 2 (A == B for single vertices).
_A = np.array([pair[0] for pair in MEDIAPIPE_TO_68], dtype=np.int64)
_B = np.array([pair[-1] for pair in MEDIAPIPE_TO_68], dtype=np.int64)


def mediapipe_to_68(mesh: np.ndarray) -> np.ndarray:
    """Map mediapipe face-mesh points (..., 468 or 478, D) to the iBUG 68 convention (..., 68, D).

    Works for any trailing coordinate dimension D (2 or 3) and any leading batch shape; NaNs propagate.
    """
    mesh = np.asarray(mesh)
    if mesh.ndim < 2 or mesh.shape[-2] < 468:
        raise ValueError(f"mediapipe_to_68 expects (..., 468|478, D) mesh points, got shape {mesh.shape}")
    return (mesh[..., _A, :] + mesh[..., _B, :]) / 2  # (..., 68, D)


def _frozen(a: np.ndarray) -> np.ndarray:
    a.setflags(write=False)
    return a


# (68, 3) canonical frontal mean shape (see the module docstring for frame, origin and scale).
TEMPLATE_68: np.ndarray = _frozen(
    np.array(
        [
            [-0.87082,  0.01067,  0.73831],  # 0
            [-0.86195,  0.20095,  0.78674],  # 1
            [-0.83297,  0.49821,  0.77618],  # 2
            [-0.78672,  0.70849,  0.73760],  # 3
            [-0.71191,  0.89589,  0.64645],  # 4
            [-0.57191,  1.08398,  0.43242],  # 5
            [-0.40935,  1.20596,  0.24698],  # 6
            [-0.20254,  1.30402,  0.07963],  # 7
            [ 0.00000,  1.33419,  0.03319],  # 8
            [ 0.20254,  1.30402,  0.07963],  # 9
            [ 0.40935,  1.20596,  0.24698],  # 10
            [ 0.57191,  1.08398,  0.43242],  # 11
            [ 0.71191,  0.89589,  0.64645],  # 12
            [ 0.78672,  0.70849,  0.73760],  # 13
            [ 0.83297,  0.49821,  0.77618],  # 14
            [ 0.86195,  0.20095,  0.78674],  # 15
            [ 0.87082,  0.01067,  0.73831],  # 16
            [-0.64340, -0.20184,  0.19443],  # 17
            [-0.56073, -0.26346,  0.09083],  # 18
            [-0.37939, -0.29751, -0.02041],  # 19
            [-0.31043, -0.29703, -0.05132],  # 20
            [-0.15696, -0.28702, -0.08507],  # 21
            [ 0.15696, -0.28702, -0.08507],  # 22
            [ 0.31043, -0.29703, -0.05132],  # 23
            [ 0.37939, -0.29751, -0.02041],  # 24
            [ 0.56073, -0.26346,  0.09083],  # 25
            [ 0.64340, -0.20184,  0.19443],  # 26
            [ 0.00000, -0.09123, -0.07607],  # 27
            [ 0.00000,  0.04038, -0.16791],  # 28
            [ 0.00000,  0.19651, -0.27544],  # 29
            [ 0.00000,  0.32874, -0.34042],  # 30
            [-0.15808,  0.46943, -0.07664],  # 31
            [-0.06719,  0.50312, -0.14697],  # 32
            [ 0.00000,  0.51159, -0.16854],  # 33
            [ 0.06719,  0.50312, -0.14697],  # 34
            [ 0.15808,  0.46943, -0.07664],  # 35
            [-0.50000, -0.02296,  0.15590],  # 36
            [-0.41275, -0.05261,  0.09394],  # 37
            [-0.30636, -0.05645,  0.07736],  # 38
            [-0.20878, -0.01410,  0.09017],  # 39
            [-0.30636,  0.01620,  0.08800],  # 40
            [-0.41275,  0.01122,  0.10396],  # 41
            [ 0.20878, -0.01410,  0.09017],  # 42
            [ 0.30636, -0.05645,  0.07736],  # 43
            [ 0.41275, -0.05261,  0.09394],  # 44
            [ 0.50000, -0.02296,  0.15590],  # 45
            [ 0.41275,  0.01122,  0.10396],  # 46
            [ 0.30636,  0.01620,  0.08800],  # 47
            [-0.27624,  0.76504,  0.03101],  # 48
            [-0.18818,  0.68737, -0.07905],  # 49
            [-0.12051,  0.66073, -0.12674],  # 50
            [ 0.00000,  0.65975, -0.15968],  # 51
            [ 0.12051,  0.66073, -0.12674],  # 52
            [ 0.18818,  0.68737, -0.07905],  # 53
            [ 0.27624,  0.76504,  0.03101],  # 54
            [ 0.20678,  0.81971, -0.02970],  # 55
            [ 0.11385,  0.86137, -0.08626],  # 56
            [ 0.00000,  0.88003, -0.10974],  # 57
            [-0.11385,  0.86137, -0.08626],  # 58
            [-0.20678,  0.81971, -0.02970],  # 59
            [-0.24214,  0.75758,  0.05866],  # 60
            [-0.11520,  0.72536, -0.04128],  # 61
            [ 0.00000,  0.72588, -0.07421],  # 62
            [ 0.11520,  0.72536, -0.04128],  # 63
            [ 0.24214,  0.75758,  0.05866],  # 64
            [ 0.12358,  0.77810, -0.06310],  # 65
            [ 0.00000,  0.78751, -0.09504],  # 66
            [-0.12358,  0.77810, -0.06310],  # 67
        ],
        dtype=np.float64,
    )
)
