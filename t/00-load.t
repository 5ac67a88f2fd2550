use strict;
use warnings;
use Test::More;
use FindBin;
use lib "$FindBin::Bin/lib";

my @modules = qw(
    PAGI::Server::Native
    PAGI::Server::Config
    PAGI::Server::Lifespan
    PAGI::Server::HTTP
    PAGI::Server
    PAGI::Server::Runner
    PAGI::Server::AccessLog
    PAGI::Server::Validate
    PAGI::Server::Scope
    PAGI::Server::Future
    PAGI::Server::Groups
    PAGI::Server::WebSocket
    PAGI::Server::SSE
    PAGI::Server::Listen
    PAGI::Server::Workers
    PAGI::Server::ProxyHeaders
    PAGI::Server::Reload
    PAGI::App::WrapPSGI
    PAGI::App::ToPSGI
    PAGI::Test::Client
    PAGI::Test::Client::Response
    PAGI::Test::Client::Cookies
    PAGI::Test::Client::WebSocket
    PAGI::Test::Client::SSE
    PAGI::Simple
    PAGI::Simple::Router
    PAGI::Simple::Context
    PAGI::Simple::Request
    PAGI::Simple::WebSocket
    PAGI::Simple::SSE
    PAGI::Simple::PubSub
    PAGI::Simple::PubSub::Memory
    PAGI::Simple::PubSub::Server
    PAGI::Simple::Session
    PAGI::Simple::Session::Store::Redis
    PAGI::Simple::Static
    PAGI::Test::Server
    PAGI::Middleware
    PAGI::Middleware::Builder
    PAGI::Middleware::AccessLog
    PAGI::Middleware::CORS
    PAGI::Middleware::ErrorHandler
    PAGI::Middleware::Gzip
    PAGI::Middleware::MethodOverride
    PAGI::Middleware::RateLimit
    PAGI::Middleware::RequestId
    PAGI::Middleware::SecurityHeaders
    PAGI::Middleware::Static
    PAGI::Middleware::TrustedProxies
    PAGI::App::File
    PAGI::App::Directory
);
use_ok($_) for @modules;

my $engine = PAGI::Server::Native->new;
isa_ok($engine, 'PAGI::Server::Native');
diag("PAGI::Server::Native $PAGI::Server::Native::VERSION, perl $], IO::Async $IO::Async::Loop::VERSION");

ok(system($^X, '-c', "$FindBin::Bin/../bin/pagi-server") == 0, 'bin/pagi-server compiles') or diag('see above');

done_testing;
