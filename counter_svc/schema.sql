-- UserCounter schema. Applied by `python -m counter_svc migrate`; safe to run again.
-- Runs unchanged on MySQL 8.0+ and MariaDB 10.11.
CREATE TABLE IF NOT EXISTS users (
  id         INT AUTO_INCREMENT PRIMARY KEY,
  username   VARCHAR(100) NOT NULL UNIQUE,
  -- BIGINT: at 10k increments/s an INT counter overflows within days.
  counter    BIGINT NOT NULL DEFAULT 0,
  created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
  updated_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP ON UPDATE CURRENT_TIMESTAMP
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;
