package PAGI::Middleware::Static;
use strict;
use warnings;

our $VERSION = '0.01';

use parent 'PAGI::Middleware';
use Future::AsyncAwait;

use PAGI::App::File;

=head1 NAME

PAGI::Middleware::Static - serve a path prefix from a directory

=head1 SYNOPSIS

    use PAGI::Middleware::Builder;
    my $app = builder {
        enable 'Static', path => '/static', root => 'public';   # /static/a.css is public/a.css
        $app;
    };

    # Plack style: the whole path under root, for paths matching a pattern
    enable 'Static', path => qr{^/(?:images|js)/}, root => 'htdocs';   # /js/a.js is htdocs/js/a.js

=head1 DESCRIPTION

Requests whose path matches are answered by L<PAGI::App::File> (ETag,
Last-Modified, conditional GET, ranges, MIME types, path safety: see there);
all others go to the wrapped app.

=head1 OPTIONS

=over

=item path

A string prefix such as C</static>: a path equal to it or starting with it
and C</> matches, and the rest of the path names the file under C<root>
(the prefix is added to C<root_path>, as a mount). Or a regular expression,
matched against the path without C<root_path>: the whole path names the file
under C<root>. Required.

=item root

The directory. Required.

=item pass_through

When true, a matching request for a file that does not exist (C<404>) goes
to the wrapped app instead. Default false: C<404>.

=item default_type, text_charset, mime_types

Passed to L<PAGI::App::File>.

=back

=cut

sub init {
    my ($self) = @_;
    my $path = $self->{path};
    $self->option_error(path => "is required (a prefix such as '/static' or a regular expression)") unless defined $path;
    if (ref $path ne 'Regexp') {
        $self->option_error(path => 'must be a string or a regular expression') if ref $path;
        $self->option_error(path => "must start with '/'") unless $path =~ m{\A/};
        $path =~ s{/+\z}{};
        $self->{prefix} = $path;
    }
    $self->option_error(root => 'is required (the directory to serve)') unless defined $self->{root};
    $self->{file_app} = PAGI::App::File->new(
        root => $self->{root},
        map { exists $self->{$_} ? ($_ => $self->{$_}) : () } qw(default_type text_charset mime_types),
    );
}

async sub call {
    my ($self, $scope, $receive, $send, $app) = @_;
    my $mount = $scope->{root_path} // '';
    my $path = $scope->{path} // '';
    my $file_scope;
    if (substr($path, 0, length $mount) eq $mount) {
        my $rest = substr($path, length $mount);
        if (defined(my $prefix = $self->{prefix})) {
            $file_scope = $self->scope_with($scope, root_path => $mount . $prefix)
                if $prefix eq '' || $rest eq $prefix || substr($rest, 0, length($prefix) + 1) eq "$prefix/";
        }
        elsif ($rest =~ $self->{path}) {
            $file_scope = $scope;
        }
    }
    return await $app->($scope, $receive, $send) unless $file_scope;
    my $file_app = $self->{file_app};
    my $answer = $file_app->answer($file_scope);
    return await $app->($scope, $receive, $send) if $answer->{status} == 404 && $self->{pass_through};
    await $file_app->send_answer($file_scope, $send, $answer);
}

=head1 SEE ALSO

L<PAGI::App::File>, L<PAGI::App::Directory>, L<PAGI::Middleware::Builder>.

=cut

1;
