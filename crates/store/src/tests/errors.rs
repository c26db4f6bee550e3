//! How database failures are classified and retried.

use tether_types::*;

use super::*;

/// A refusal by the database that no retry can fix (a duplicate key; on
/// PostgreSQL a NUL in text) is an internal error, not "busy; retry": the
/// codes are read by the backend they came from (PostgreSQL's SQLSTATEs are
/// mostly digits, and were once read as SQLite result codes).
pub(super) async fn database_errors_are_classified_by_backend(store: Store) {
    let p = project(&store).await;
    let t = join_token(&store, &p, 7, 0, 10_000).await;
    let dup = store.join_token_create(&t, b"hash").await.unwrap_err();
    assert_eq!(dup.failure(), Some(Failure::Other), "{dup}");
    assert!(!dup.is_transient(), "{dup}");
    assert_eq!(Error::from(dup).code, ErrorCode::Internal);
    let nul = JoinToken { id: id(JoinTokenId::from_random, 8), description: "a\0b".into(), ..t };
    match store.join_token_create(&nul, b"hash").await {
        Ok(_) => assert_eq!(store.backend_name(), "sqlite", "PostgreSQL text cannot hold NUL"),
        Err(e) => {
            assert_eq!(store.backend_name(), "postgres", "{e}");
            assert_eq!(e.failure(), Some(Failure::Other), "{e}");
            assert!(!e.is_transient(), "{e}");
        }
    }
}

/// PostgreSQL only: SQLite has one writer, so its transactions never lose to
/// one another.
mod postgres_only {
    use super::*;

    /// A transaction that loses to another (SQLSTATE 40001) is run again, a
    /// bounded number of times. The losses are staged by a trigger that fails
    /// while a sequence (which no rollback resets) is below a mark.
    #[tokio::test]
    async fn serialization_failures_are_retried_a_bounded_number_of_times() {
        let store = postgres_store().await;
        let p = project(&store).await;
        let Backend::Postgres(pool) = &store.backend else { unreachable!() };
        for stmt in [
            "CREATE SEQUENCE losses",
            "CREATE TABLE loss_limit (n BIGINT NOT NULL)",
            "INSERT INTO loss_limit VALUES (2)",
            "CREATE FUNCTION lose() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
               IF nextval('losses') <= (SELECT n FROM loss_limit) THEN
                 RAISE EXCEPTION 'staged conflict' USING ERRCODE = 'serialization_failure';
               END IF;
               RETURN NEW;
             END $$",
            "CREATE TRIGGER lose BEFORE INSERT ON join_tokens FOR EACH ROW EXECUTE FUNCTION lose()",
        ] {
            sqlx::query(stmt).execute(pool).await.unwrap();
        }
        // Two losses, then it commits: one row.
        let t = join_token(&store, &p, 1, 0, 10_000).await;
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM join_tokens WHERE id = $1")
            .bind(t.id.as_str())
            .fetch_one(pool)
            .await
            .unwrap();
        assert_eq!(n, 1);
        let tries: i64 = sqlx::query_scalar("SELECT last_value FROM losses").fetch_one(pool).await.unwrap();
        assert_eq!(tries, 3, "two losses and the commit");

        // Always losing: the first try and TX_RETRIES more, then the error.
        sqlx::query("UPDATE loss_limit SET n = 1000").execute(pool).await.unwrap();
        let t2 = JoinToken { id: id(JoinTokenId::from_random, 2), ..t };
        let err = store.join_token_create(&t2, b"hash").await.unwrap_err();
        assert_eq!(err.failure(), Some(Failure::Busy), "{err}");
        assert_eq!(Error::from(err).code, ErrorCode::Unavailable);
        let tries: i64 = sqlx::query_scalar("SELECT last_value FROM losses").fetch_one(pool).await.unwrap();
        assert_eq!(tries, 3 + 1 + i64::from(crate::TX_RETRIES));
    }
}
