namespace Sdp.Engine.Subnetworks;

/// <summary>Eigenvalues of small symmetric matrices by the cyclic Jacobi rotation method.</summary>
public static class SymmetricEigen
{
    /// <summary>
    /// Eigenvalues of the symmetric matrix <paramref name="a"/> (n×n, not modified), ascending. Cyclic
    /// Jacobi: each sweep zeroes every off-diagonal pair (p, q) with a plane rotation chosen so that
    /// (AᵀA)'s off-diagonal mass strictly decreases; stops when it is below 1e-14 of the Frobenius norm.
    /// </summary>
    public static double[] Eigenvalues(double[,] a, int maxSweeps = 100)
    {
        ArgumentNullException.ThrowIfNull(a);
        int n = a.GetLength(0);
        if (a.GetLength(1) != n) throw new ArgumentException($"SymmetricEigen: expected a square matrix, got {n}x{a.GetLength(1)}");
        var m = (double[,])a.Clone();
        for (int i = 0; i < n; i++)
            for (int j = i + 1; j < n; j++)
                if (Math.Abs(m[i, j] - m[j, i]) > 1e-9 * (1 + Math.Abs(m[i, j])))
                    throw new ArgumentException($"SymmetricEigen: matrix is not symmetric at ({i}, {j}): {m[i, j]} vs {m[j, i]}");
        double norm = 0;
        foreach (double v in m) norm += v * v;
        double tol = 1e-28 * Math.Max(norm, double.Epsilon);
        for (int sweep = 0; sweep < maxSweeps; sweep++)
        {
            double off = 0;
            for (int i = 0; i < n; i++)
                for (int j = i + 1; j < n; j++) off += m[i, j] * m[i, j];
            if (off <= tol) break;
            for (int p = 0; p < n; p++)
            {
                for (int q = p + 1; q < n; q++)
                {
                    double apq = m[p, q];
                    if (apq == 0) continue;
                    // Choose t = tan θ, the smaller root of t² + 2τt − 1 = 0, with τ = (a_qq − a_pp) / (2 a_pq).
                    double tau = (m[q, q] - m[p, p]) / (2 * apq);
                    double t = Math.Sign(tau == 0 ? 1 : tau) / (Math.Abs(tau) + Math.Sqrt(1 + tau * tau));
                    double c = 1 / Math.Sqrt(1 + t * t), s = t * c;
                    for (int r = 0; r < n; r++)
                    {
                        // Columns p and q: A ← A·J.
                        double arp = m[r, p], arq = m[r, q];
                        m[r, p] = c * arp - s * arq;
                        m[r, q] = s * arp + c * arq;
                    }
                    for (int r = 0; r < n; r++)
                    {
                        // Rows p and q: A ← Jᵀ·A.
                        double apr = m[p, r], aqr = m[q, r];
                        m[p, r] = c * apr - s * aqr;
                        m[q, r] = s * apr + c * aqr;
                    }
                    m[p, q] = m[q, p] = 0;
                }
            }
        }
        var eig = new double[n];
        for (int i = 0; i < n; i++) eig[i] = m[i, i];
        Array.Sort(eig);
        return eig;
    }
}
