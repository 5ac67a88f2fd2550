# Dependencies of PAGI-Server-Native (read by cpanm --installdeps .).
# Building also needs cargo (Rust) and a C compiler, which CPAN cannot supply.

requires 'perl', '5.026';

requires 'IO::Async', '0.78';
requires 'IO::Async::Loop', '0.78';    # ships with IO::Async
requires 'Future', '0.44';
requires 'Future::AsyncAwait', '0.50';
# Apps awaiting Future::IO run on IO::Async under the server; the
# implementation (Future::IO::Impl::IOAsync) ships with IO::Async.
requires 'Future::IO', '0.11';
requires 'IO::Socket::IP';
requires 'Getopt::Long';
requires 'Time::HiRes';
requires 'Scalar::Util';
requires 'JSON::PP';
requires 'POSIX';
# PAGI::Simple: JSON bodies, form/multipart parsing, cookies, sessions
# (HMAC-SHA256 signing; AES-GCM encryption and random ids from CryptX).
requires 'JSON::MaybeXS', '1.004';
requires 'Cpanel::JSON::XS', '4.0';
requires 'HTTP::Entity::Parser', '0.21';
requires 'Cookie::Baker', '0.11';
requires 'Hash::MultiValue', '0.16';
requires 'Digest::SHA';
requires 'MIME::Base64', '3.11';
requires 'CryptX', '0.060';

# Faster loop on Linux; IO::Async picks it up automatically when installed.
recommends 'IO::Async::Loop::Epoll';
# Future's C implementation: Future uses it when installed, which makes every
# await cheaper (Debian 12 does not package it).
recommends 'Future::XS', '0.09';
# PAGI::App::File's content types (a built-in table of common types otherwise).
recommends 'MIME::Types';

on configure => sub {
    requires 'ExtUtils::MakeMaker', '6.64';
};

on test => sub {
    requires 'Test::More', '0.98';
    requires 'Net::Async::HTTP', '0.44';
    # PAGI::App::WrapPSGI tests (Plack::Test::Suite, Lint, AnyEvent timers),
    # t/psgi-topsgi.t (ToPSGI under plackup and Starman: the Starman half
    # fails under CI=true without it, else skips), and the real PSGI software
    # of t/psgi-apps-*.t and examples/09-psgi-bridge.
    requires 'Plack', '1.0047';
    requires 'Plack::Middleware::Session', '0.33';
    requires 'Plack::Middleware::Deflater', '0.12';
    requires 'AnyEvent', '7.0';
    requires 'Dancer2', '0.400000';
    requires 'Catalyst::Runtime', '5.90';
    requires 'Catalyst::Plugin::Session', '0.43';
    requires 'Catalyst::Plugin::Session::State::Cookie', '0.18';
    requires 'Catalyst::Plugin::Session::Store::FastMmap', '0.16';
    recommends 'Starman';
    # TLS tests; they skip without it outside CI.
    recommends 'IO::Socket::SSL';
};
