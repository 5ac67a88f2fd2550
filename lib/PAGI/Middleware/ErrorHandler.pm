package PAGI::Middleware::ErrorHandler;
use strict;
use warnings;

our $VERSION = '0.01';

use parent 'PAGI::Middleware';
use Future::AsyncAwait;
use Scalar::Util ();

=head1 NAME

PAGI::Middleware::ErrorHandler - turn an app's exception into an error page

=head1 SYNOPSIS

    enable 'ErrorHandler';                       # development detail when PAGI_ENV=development
    enable 'ErrorHandler', development => 0, logger => sub { $log->error($_[0]) };

=head1 DESCRIPTION

When the wrapped app dies (its Future fails) in an C<http> scope before the
response started, the client gets a C<500 Internal Server Error> page and
the error is logged; the Future then completes normally, so the server
keeps the connection. The page is HTML when the request's C<Accept> names
C<text/html>, else plain text. In development it shows the error text
(HTML-escaped); in production only "Internal Server Error", so nothing
internal leaks.

An exception object with a C<status> method returning a 4xx or 5xx code
is answered with that status (its text is shown in development only).

After the response started nothing can be sent any more: the error is
logged and the exception propagates, so the server ends the connection
(the truncated response is the only signal HTTP/1.1 has, PAGI-SPEC 1.4).
Other scope types pass through.

=head1 OPTIONS

=over

=item development

True to show the error text. Default: true when C<PAGI_ENV> is
C<development> (as C<pagi-server> sets it).

=item logger

A code reference called with the error text. Default: C<warn>.

=back

=cut

sub init {
    my ($self) = @_;
    $self->{development} //= (($ENV{PAGI_ENV} // '') eq 'development') ? 1 : 0;
    $self->option_error(logger => 'must be a code reference') if defined $self->{logger} && ref $self->{logger} ne 'CODE';
    $self->{logger} //= sub { warn "PAGI::Middleware::ErrorHandler: $_[0]" . ($_[0] =~ /\n\z/ ? '' : "\n") };
}

my %REASON = (400 => 'Bad Request', 401 => 'Unauthorized', 403 => 'Forbidden', 404 => 'Not Found',
              405 => 'Method Not Allowed', 409 => 'Conflict', 413 => 'Content Too Large', 422 => 'Unprocessable Content',
              429 => 'Too Many Requests', 500 => 'Internal Server Error', 502 => 'Bad Gateway',
              503 => 'Service Unavailable', 504 => 'Gateway Timeout');

async sub call {
    my ($self, $scope, $receive, $send, $app) = @_;
    my $started = 0;
    my $watch_send = async sub {
        my ($event) = @_;
        $started = 1 if $event->{type} eq 'http.response.start';
        await $send->($event);
    };
    my $ok = eval { await $app->($scope, $receive, $watch_send); 1 };
    return if $ok;
    my $error = $@;
    my $text = "$error";
    $self->{logger}->(($started ? 'after the response started: ' : '') . $text);
    die $error if $started;

    my $status = 500;
    if (Scalar::Util::blessed($error) && $error->can('status')) {
        my $wanted = $error->status // '';
        $status = $wanted if $wanted =~ /\A[45]\d\d\z/;
    }
    my $reason = $REASON{$status} // ($status >= 500 ? 'Server Error' : 'Client Error');
    my $detail = $self->{development} ? $text : undef;
    my $accept = $self->header($scope->{headers}, 'accept') // '';
    my ($type, $body);
    if ($accept =~ m{text/html}i) {
        $type = 'text/html; charset=utf-8';
        $body = "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>$status $reason</title></head>\n"
            . "<body><h1>$status $reason</h1>\n"
            . (defined $detail ? '<pre>' . $self->html_escape($detail) . "</pre>\n" : '')
            . "</body></html>\n";
    }
    else {
        $type = 'text/plain; charset=utf-8';
        $body = "$status $reason\n" . (defined $detail ? "\n$detail" . ($detail =~ /\n\z/ ? '' : "\n") : '');
    }
    utf8::encode($body) if utf8::is_utf8($body);
    await $self->send_response($send, $status, [ 'content-type' => $type, 'cache-control' => 'no-store' ], $body);
}

=head1 SEE ALSO

L<PAGI::Middleware>, PAGI-SPEC 1.4.

=cut

1;
