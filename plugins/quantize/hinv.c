/* The inverse Hessian factor that GPTQ and SparseGPT share (both Frantar et al.): the upper
 * Cholesky factor of (H + lambda I)^-1, with lambda raised when H is singular. */
#include <math.h>
#include <stdio.h>

#include "quantize.h"

/* LAPACK (OpenBLAS ships it, without the LAPACKE headers on Debian): Cholesky factorization
 * and the inverse of a triangular matrix, column-major, 32-bit integers (OpenBLAS's default
 * interface). */
extern void dpotrf_(const char *uplo, const int *n, double *a, const int *lda, int *info);
extern void dtrtri_(const char *uplo, const char *diag, const int *n, double *a, const int *lda, int *info);

/* Upper Cholesky factor U of H^-1 (H^-1 = U^T U, row-major) from H + lambda I, in double: the
 * reference computes it as cholesky(cholesky_inverse(cholesky(H)), upper), three O(n^3) passes
 * after the first factorization. One factorization and one triangular inverse give the same
 * factor: with J the reversal permutation, J H J = L L^T makes H = M M^T for the upper
 * M = J L J, so H^-1 = M^-T M^-1 and U = M^-1 = J L^-1 J (upper, positive diagonal: the
 * unique such factor). R is scratch of n*n doubles. */
static int chol_inverse_upper(const double *H, int64_t n, double lambda, double *U, double *R) {
    for (int64_t i = 0; i < n; i++) /* column-major R = J H J (H is symmetric) */
        for (int64_t j = 0; j < n; j++) R[i + j * n] = H[(n - 1 - i) * n + (n - 1 - j)] + (i == j ? lambda : 0.0);
    int nn = (int)n, info = 0;
    /* on one thread, as the cpu plugin keeps OpenBLAS: widening it here would widen it for a
     * stage running beside this one too (the setting is process-wide; see calib.c) */
    dpotrf_("L", &nn, R, &nn, &info);
    if (info == 0) dtrtri_("L", "N", &nn, R, &nn, &info);
    if (info != 0) return -1;
    for (int64_t i = 0; i < n; i++)
        for (int64_t j = 0; j < n; j++) {
            const double v = j >= i ? R[(n - 1 - i) + (n - 1 - j) * n] : 0.0; /* L^-1's lower part, reversed */
            if (!isfinite(v)) return -1;
            U[i * n + j] = v;
        }
    return 0;
}

int qz_damped_inverse_upper(const double *H, int64_t n, double *damp, double *U, double *R, char *msg, size_t msg_len) {
    double mean = 0;
    for (int64_t i = 0; i < n; i++) mean += H[i * n + i];
    mean /= (double)n;
    /* more dampening when the factorization fails (a rank-deficient calibration set) */
    double d = *damp;
    int ok = isfinite(mean) && chol_inverse_upper(H, n, d * mean, U, R) == 0;
    for (int tries = 0; !ok && isfinite(mean) && tries < 5; tries++) {
        d = d > 0 ? d * 10 : 1e-4;
        ok = chol_inverse_upper(H, n, d * mean, U, R) == 0;
    }
    if (!ok) {
        snprintf(msg, msg_len, "the Hessian is not positive definite even with dampening %g of its mean diagonal "
                 "(%g): the calibration activations are degenerate (NaN/inf, or all zero)", d, mean);
        return -1;
    }
    *damp = d;
    return 0;
}
