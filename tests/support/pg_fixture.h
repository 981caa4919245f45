// A fresh PostgreSQL database per test, on the private cluster that tests/run_with_postgres.sh
// starts (its admin URI arrives in OUTBOX_TEST_PG).
//
//     outbox::test::TestDatabase db;          // CREATE DATABASE outbox_t_<pid>_<n>_<random>
//     db.migrate();                           // outbox::migrate, REQUIREd to succeed
//     db.exec(R"(INSERT INTO "Outbox" ...)");
//     CHECK(db.count(R"(SELECT count(*) FROM "Outbox")") == 1);
//     ChildProcess worker(OUTBOX_BINARY, {.args = {"run"}, .env = {{"DATABASE_URL", db.url()}}});
//
// The destructor drops the database WITH (FORCE), so connections a test (or a process it started)
// left open do not keep it alive. The helpers exec/scalar/count share one connection owned by the
// fixture and are for the test's own thread; a thread of its own takes connect().
#pragma once

#include "common/pg.h"

#include <string>

namespace outbox::test {

// OUTBOX_TEST_PG. Fails the current test with an explanation when the variable is missing (the
// test binary was not started through tests/run_with_postgres.sh).
std::string admin_conninfo();

class TestDatabase {
  public:
    TestDatabase();
    ~TestDatabase();
    TestDatabase(const TestDatabase&) = delete;
    TestDatabase& operator=(const TestDatabase&) = delete;

    const std::string& name() const { return name_; }
    // The new database as a libpq key=value string and as a URI, both with the password, so either
    // can be a DATABASE_URL.
    const std::string& conninfo() const { return conninfo_; }
    const std::string& url() const { return url_; }
    // The password in both (empty when OUTBOX_TEST_PG has none), for checking that it is masked.
    const std::string& password() const { return password_; }

    // A new connection to this database; REQUIREs success.
    PgConn connect() const;

    // Runs outbox::migrate on a new connection and REQUIREs success.
    void migrate() const;

    // Runs `sql` (one or more statements) on the fixture's connection and REQUIREs success.
    PgResult exec(const std::string& sql) const;
    // The first column of the first row as text ("" for NULL); REQUIREs exactly one row.
    std::string scalar(const std::string& sql) const;
    // scalar() as a number, for SELECT count(*) and the like.
    long count(const std::string& sql) const;

    // The Calibr event-bus tables as the application itself creates them (SPEC 1, in the style of
    // its Prisma migration), written here independently of sql/migrations so that the tests check
    // compatibility with the application's schema rather than with our own copy of it.
    void create_calibr_tables_like_the_application() const;

  private:
    std::string name_;
    std::string conninfo_;
    std::string url_;
    std::string password_;
    mutable PgConn conn_;
};

} // namespace outbox::test
