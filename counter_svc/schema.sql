-- UserCounter schema. Applied by `python -m counter_svc migrate`; safe to run again.
-- Runs unchanged on MySQL 8.0+ and MariaDB 10.11.
CREATE TABLE IF NOT EXISTS users (
  id         INT AUTO_INCREMENT PRIMARY KEY,
  -- The collation is named because the servers' defaults differ: MariaDB's
  -- utf8mb4_general_ci takes every character beyond U+FFFF (emoji) as equal, MySQL 8's
  -- utf8mb4_0900_ai_ci does not. utf8mb4_unicode_520_ci exists on both and compares the
  -- same there: case- and accent-insensitive, like MySQL 8's default.
  username   VARCHAR(100) CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_520_ci NOT NULL UNIQUE,
  -- BIGINT: at 10k increments/s an INT counter overflows within days.
  counter    BIGINT NOT NULL DEFAULT 0,
  created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
  updated_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP ON UPDATE CURRENT_TIMESTAMP
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_520_ci;
