# PAGI::Middleware::AccessLog: combined lines to a filehandle, byte counts
# (body and file), status of a dying app, escaped header values, formats;
# and lines written over a real socket.
use strict;
use warnings;
use Test::More;
use FindBin;
use lib "$FindBin::Bin/lib";
use File::Temp ();
use Future::AsyncAwait;
use PAGI::Test::Events qw(http_scope call_app response_of);
use PAGI::Test::Server qw(start_server stop_server http_get wait_for);
use PAGI::Middleware::AccessLog;

my $file = File::Temp->new;
print {$file} 'x' x 300;
close $file;
my $inner = async sub {
    my ($scope, $receive, $send) = @_;
    die "only http\n" unless $scope->{type} eq 'http';
    die "boom\n" if $scope->{path} eq '/die';
    await $send->({ type => 'http.response.start', status => $scope->{path} eq '/missing' ? 404 : 200, headers => [] });
    if ($scope->{path} eq '/file') {
        await $send->({ type => 'http.response.body', file => $file->filename, offset => 100 });
        return;
    }
    await $send->({ type => 'http.response.body', body => 'hello', more => 1 });
    await $send->({ type => 'http.response.body', body => ' world', more => 0 });
};

my $log = '';
open my $fh, '>', \$log or die;
my $app = PAGI::Middleware::AccessLog->new(fh => $fh)->wrap($inner);
call_app($app, http_scope(path => '/a b', raw_path => '/a%20b', query_string => 'x=1', client => [ '192.0.2.7', 5555 ],
    headers => [ referer => 'http://ref.example/', 'user-agent' => "evil\"agent\n127.0.0.1 - - fake" ]));
like($log, qr{\A192\.0\.2\.7 - - \[\d\d/\w{3}/\d{4}:\d\d:\d\d:\d\d \+0000\] "GET /a%20b\?x=1 HTTP/1\.1" 200 11 "http://ref\.example/" "evil\\x22agent\\x0a127\.0\.0\.1 - - fake"\n\z},
    'a combined line: raw path, query, status, body bytes, referer, user agent with " and newline escaped');
is(($log =~ tr/\n//), 1, 'exactly one line');

$log = '';
call_app($app, http_scope(path => '/file'));
like($log, qr{" 200 200 "}, 'a file body from offset 100 of 300 bytes counts 200');
$log = '';
my $r = call_app($app, http_scope(path => '/die'));
like($r->{error}, qr/boom/, 'a failure propagates');
like($log, qr{"GET /die HTTP/1\.1" 500 - }, 'and is logged as 500 with no bytes');

my @lines;
my $tiny = PAGI::Middleware::AccessLog->new(logger => sub { push @lines, $_[0] }, format => '%m %U %s %B')->wrap($inner);
call_app($tiny, http_scope(path => '/missing', method => 'POST'));
is($lines[0], "POST /missing 404 11\n", 'a format of atoms, to a logger');

eval { PAGI::Middleware::AccessLog->new(format => '%Z') };
like($@, qr/option 'format' is not valid: .*%Z/, 'an unknown atom names the option and the atom');

my $seen;
call_app(PAGI::Middleware::AccessLog->new(fh => $fh)->wrap(async sub { $seen = 1 }), { type => 'websocket', headers => [] });
ok($seen, 'websocket scopes pass through');

my $out = File::Temp->new;
open my $ofh, '>>', $out->filename or die;
my ($server, $port) = start_server(app => PAGI::Middleware::AccessLog->new(fh => $ofh, format => 'common')->wrap($inner));
http_get($port, '/over/socket')->get;
my $text = '';
ok(wait_for(sub { $text = do { open my $in, '<', $out->filename; local $/; <$in> // '' }; length $text }, 10), 'a line was written');
like($text, qr{^127\.0\.0\.1 - - \[[^\]]+\] "GET /over/socket HTTP/1\.1" 200 11$}m, 'a common line for the real request');
stop_server($server);

done_testing;
